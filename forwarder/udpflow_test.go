package forwarder

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	rstack "github.com/rootlessnet/rootlessnet/stack"
)

// udpPacket builds an IPv4 UDP packet.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	ip := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	s, d := tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
	h := header.IPv4(ip)
	h.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: s, DstAddr: d})
	h.SetChecksum(^h.CalculateChecksum())
	u := header.UDP(ip[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, s, d, uint16(len(u)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, xsum)))
	return ip
}

// udpTestStack is a real netstack on a channel link whose UDP goes to a
// forwarder, for tests that play the container with IPv4 packets.
type udpTestStack struct {
	a    rstack.Addressing
	link *channel.Endpoint
	t    *testing.T
}

// newUDPTestStack attaches f, with the default addressing's policy, to a
// new netstack; the test's cleanup closes it.
func newUDPTestStack(t *testing.T, f *Forwarder) *udpTestStack {
	t.Helper()
	a, err := rstack.ParseCIDR(rstack.DefaultCIDR)
	if err != nil {
		t.Fatal(err)
	}
	f.cfg.Policy = Policy{Gateway: a.Gateway, DNS: a.DNS, Network: a.Network}
	link := channel.New(64, 1500, "")
	s, err := rstack.New(rstack.Config{Link: link, Addressing: a, Handlers: rstack.Handlers{UDP: f.HandleUDP}})
	if err != nil {
		t.Fatal(err)
	}
	f.Attach(s)
	t.Cleanup(func() { s.Close(); s.Wait(); link.Close() })
	return &udpTestStack{a: a, link: link, t: t}
}

// inject delivers an IPv4 packet from the container.
func (st *udpTestStack) inject(ip []byte) {
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(ip)})
	st.link.InjectInbound(ipv4.ProtocolNumber, pkt)
	pkt.DecRef()
}

// receive returns the next packet to the container as IPv4 bytes.
func (st *udpTestStack) receive() header.IPv4 {
	st.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pkt := st.link.ReadContext(ctx)
	if pkt == nil {
		st.t.Fatal("nothing came back to the container")
	}
	defer pkt.DecRef()
	return header.IPv4(pkt.ToView().AsSlice())
}

// TestUDPFlowLifetime drives the UDP forwarder through a real netstack:
// a flow to the gateway reaches a loopback echo server and back, counts as
// one flow, and ends after the idle timeout; with the cap at one, a second
// flow is refused with ICMP port unreachable.
func TestUDPFlowLifetime(t *testing.T) {
	t.Run("goroutine", func(t *testing.T) { testUDPFlowLifetime(t, nil) })
	t.Run("loop", func(t *testing.T) {
		sc := &pollingShortcut{t: t}
		testUDPFlowLifetime(t, sc)
		// Two flows watched; the first idled out, its watch stopped
		// before its socket closed.
		if sc.watched.Load() != 2 || sc.stopped.Load() != 1 {
			t.Errorf("host sockets watched %d times, stopped %d; want 2 and 1", sc.watched.Load(), sc.stopped.Load())
		}
	})
}

// pollingShortcut plays the fast path's UDP side for the forwarder: it
// takes no datagram either way (the stack carries them), and serves
// WatchHost with a goroutine that polls, checking that the socket is
// still open when its watch stops.
type pollingShortcut struct {
	t                *testing.T
	watched, stopped atomic.Int32
}

func (p *pollingShortcut) AddUDPFlow(src, dst netip.AddrPort, sink UDPSink) func() { return func() {} }
func (p *pollingShortcut) WriteUDPBatch(src, dst netip.AddrPort, run []byte, seg int) bool {
	return false
}
func (p *pollingShortcut) WriteUDP(src, dst netip.AddrPort, payload []byte) bool { return false }
func (p *pollingShortcut) AddUDPService(dst netip.AddrPort, svc UDPService) func() {
	return func() {}
}
func (p *pollingShortcut) WatchHost(conn syscall.Conn, onReadable func()) (func(), error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	p.watched.Add(1)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
				onReadable()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-ended
			if err := rc.Control(func(uintptr) {}); err != nil {
				p.t.Errorf("the host socket was closed before its watch stopped: %v", err)
			}
			p.stopped.Add(1)
		})
	}, nil
}

func testUDPFlowLifetime(t *testing.T, shortcut UDPShortcut) {
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	port := uint16(echo.LocalAddr().(*net.UDPAddr).Port)

	const idle = 500 * time.Millisecond
	f, _ := testForwarder(t)
	f.cfg.UDPIdleTimeout = idle
	f.cfg.UDPShortcut = shortcut
	st := newUDPTestStack(t, f)
	a, receive := st.a, st.receive
	send := func(srcPort uint16, msg string) {
		st.inject(udpPacket(netip.AddrPortFrom(a.Guest, srcPort), netip.AddrPortFrom(a.Gateway, port), []byte(msg)))
	}

	send(40000, "hello")
	ip := receive()
	if ip.Protocol() != uint8(header.UDPProtocolNumber) || string(header.UDP(ip.Payload()).Payload()) != "hello" {
		t.Fatalf("got %x, want the echo of hello", []byte(ip))
	}
	if n := f.Flows(); n != 1 {
		t.Fatalf("%d flows counted, want 1", n)
	}

	// Capped at one: another flow is refused at once.
	f.SetMaxFlows(1)
	send(40001, "refused")
	ip = receive()
	icmp := header.ICMPv4(ip.Payload())
	if ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("got %x, want ICMP port unreachable", []byte(ip))
	}

	// Idle: the first flow ends, and the cap has room again.
	deadline := time.Now().Add(idle + 5*time.Second)
	for f.Flows() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d flows still counted %v after the last datagram (idle timeout %v)", f.Flows(), idle+5*time.Second, idle)
		}
		time.Sleep(20 * time.Millisecond)
	}
	send(40001, "again")
	ip = receive()
	if ip.Protocol() != uint8(header.UDPProtocolNumber) || string(header.UDP(ip.Payload()).Payload()) != "again" {
		t.Fatalf("got %x, want the echo of again", []byte(ip))
	}
}
