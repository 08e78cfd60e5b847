package relay

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// streamFixture is a relay.Stream between a netstack endpoint (the
// container's side) and a host TCP connection: guest is the netstack peer
// of that endpoint, host the kernel peer of the host connection.
type streamFixture struct {
	guest *gonet.TCPConn
	gep   tcpip.Endpoint
	host  *net.TCPConn
	done  chan error
}

// loopbackStack is a netstack with 127.0.0.1 on a loopback NIC, closed
// when the test ends.
func loopbackStack(t *testing.T, transport stack.TransportProtocolFactory) (*stack.Stack, tcpip.Address) {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{transport},
	})
	t.Cleanup(func() { s.Close(); s.Wait() })
	if err := s.CreateNIC(1, loopback.New()); err != nil {
		t.Fatal(err)
	}
	addr := tcpip.AddrFrom4([4]byte{127, 0, 0, 1})
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: addr.WithPrefix().Subnet(), NIC: 1}})
	return s, addr
}

func newStreamFixture(t *testing.T) *streamFixture {
	t.Helper()
	s, addr := loopbackStack(t, tcp.NewProtocol)

	// The relayed endpoint is accepted from a listener, as the
	// forwarder's are; the container's side dials it.
	lwq := new(waiter.Queue)
	lep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, lwq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer lep.Close()
	if terr := lep.Bind(tcpip.FullAddress{NIC: 1, Addr: addr, Port: 5000}); terr != nil {
		t.Fatal(terr)
	}
	if terr := lep.Listen(4); terr != nil {
		t.Fatal(terr)
	}
	gwq := new(waiter.Queue)
	gep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, gwq)
	if terr != nil {
		t.Fatal(terr)
	}
	entry, connected := waiter.NewChannelEntry(waiter.WritableEvents)
	gwq.EventRegister(&entry)
	if terr := gep.Connect(tcpip.FullAddress{NIC: 1, Addr: addr, Port: 5000}); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			t.Fatal(terr)
		}
		<-connected
	}
	gwq.EventUnregister(&entry)
	aentry, acceptable := waiter.NewChannelEntry(waiter.ReadableEvents)
	lwq.EventRegister(&aentry)
	defer lwq.EventUnregister(&aentry)
	var ep tcpip.Endpoint
	var wq *waiter.Queue
	for {
		var terr tcpip.Error
		ep, wq, terr = lep.Accept(nil)
		if terr == nil {
			break
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			t.Fatal(terr)
		}
		select {
		case <-acceptable:
		case <-time.After(5 * time.Second):
			t.Fatal("no connection to accept")
		}
	}

	hl, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	host, err := net.DialTCP("tcp4", nil, hl.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	relayed, err := hl.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	// A small socket buffer on the relay's side makes its writes come
	// up short, the path where bytes wait in hostWriter.pending.
	relayed.SetWriteBuffer(16 << 10)
	host.SetReadBuffer(16 << 10)

	f := &streamFixture{guest: gonet.NewTCPConn(gwq, gep), gep: gep, host: host, done: make(chan error, 1)}
	go func() { f.done <- Stream(context.Background(), ep, wq, relayed) }()
	t.Cleanup(func() { f.guest.Close(); host.Close() })
	return f
}

// writeMixed writes n random bytes in writes of random sizes, from one
// byte to 200 KiB, so that the relay sees both small and large views,
// and returns their hash.
func writeMixed(w io.Writer, n int, seed uint64) ([32]byte, error) {
	rng := rand.New(rand.NewPCG(seed, seed))
	h := sha256.New()
	buf := make([]byte, 200<<10)
	for n > 0 {
		size := 1 + rng.IntN(len(buf))
		if rng.IntN(3) == 0 {
			size = 1 + rng.IntN(300)
		}
		size = min(size, n)
		chunk := buf[:size]
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return [32]byte{}, err
		}
		n -= size
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// readAll hashes what r yields until EOF, reading slowly at first so
// that the writer's socket fills.
func readAll(r io.Reader) ([32]byte, int, error) {
	time.Sleep(100 * time.Millisecond)
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, int(n), err
}

type hashResult struct {
	sum [32]byte
	n   int
	err error
}

// TestStreamBothWaysHalfClose moves 6 MiB each way at once, in mixed
// write sizes, then half-closes one direction after the other: every
// byte must arrive in order, each FIN must reach the other side while the
// other direction still works, and Stream must end without error.
func TestStreamBothWaysHalfClose(t *testing.T) {
	f := newStreamFixture(t)
	const size = 6 << 20

	toHost := make(chan hashResult, 1)
	go func() {
		sum, n, err := readAll(f.host)
		toHost <- hashResult{sum, n, err}
	}()
	toGuest := make(chan hashResult, 1)
	go func() {
		sum, n, err := readAll(f.guest)
		toGuest <- hashResult{sum, n, err}
	}()

	sentDown := make(chan [32]byte, 1)
	go func() {
		sum, err := writeMixed(f.host, size, 2)
		if err != nil {
			t.Error("host write:", err)
		}
		sentDown <- sum
	}()
	sentUp, err := writeMixed(f.guest, size, 1)
	if err != nil {
		t.Fatal("guest write:", err)
	}
	// The container's FIN first: the host sees EOF, the other way goes on.
	if err := f.guest.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := <-toHost
	if got.err != nil || got.n != size || got.sum != sentUp {
		t.Fatalf("container->host: %d bytes (want %d), hash match %v, err %v", got.n, size, got.sum == sentUp, got.err)
	}
	want := <-sentDown
	if err := f.host.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got = <-toGuest
	if got.err != nil || got.n != size || got.sum != want {
		t.Fatalf("host->container: %d bytes (want %d), hash match %v, err %v", got.n, size, got.sum == want, got.err)
	}
	select {
	case err := <-f.done:
		if err != nil {
			t.Fatalf("Stream: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream did not end after both FINs")
	}
}

// TestStreamResets checks that a reset on either side resets the other.
func TestStreamResets(t *testing.T) {
	t.Run("host", func(t *testing.T) {
		f := newStreamFixture(t)
		f.host.SetLinger(0)
		f.host.Close()
		f.guest.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := f.guest.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || errors.Is(err, io.EOF) || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("container side read: %v, want a reset", err)
		}
		if err := <-f.done; err == nil {
			t.Fatal("Stream reported no error after a host reset")
		}
	})
	t.Run("container", func(t *testing.T) {
		f := newStreamFixture(t)
		f.gep.Abort() // RST

		f.host.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := f.host.Read(make([]byte, 1))
		if err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("host side read: %v, want a reset", err)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("host side read timed out: no reset")
		}
		if err := <-f.done; err == nil {
			t.Fatal("Stream reported no error after a container reset")
		}
	})
}
