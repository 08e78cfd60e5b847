package relay

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TestUDPToHost sends datagrams between two endpoints of a loopback
// netstack; the receiving one is relayed to a host socket, which must see
// every datagram in order, including those queued before the relay began.
func TestUDPToHost(t *testing.T) {
	s, addr := loopbackStack(t, udp.NewProtocol)

	var rwq, swq waiter.Queue
	recv, terr := s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &rwq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer recv.Close()
	if terr := recv.Bind(tcpip.FullAddress{Addr: addr, Port: 4000}); terr != nil {
		t.Fatal(terr)
	}
	send, terr := s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &swq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer send.Close()
	to := tcpip.FullAddress{Addr: addr, Port: 4000}
	write := func(i int) {
		var r bytes.Reader
		r.Reset([]byte(fmt.Sprintf("datagram %d", i)))
		if _, terr := send.Write(&r, tcpip.WriteOptions{To: &to}); terr != nil {
			t.Fatal(terr)
		}
	}

	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	host, err := net.DialUDP("udp", nil, sink.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	const before, total = 3, 50
	for i := 0; i < before; i++ {
		write(i)
	}
	seen := 0
	stop, err := UDPToHost(recv, &rwq, host, func(int) { seen++ })
	if err != nil {
		t.Fatal(err)
	}
	for i := before; i < total; i++ {
		write(i)
	}
	sink.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	for i := 0; i < total; i++ {
		n, err := sink.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want := fmt.Sprintf("datagram %d", i); string(buf[:n]) != want {
			t.Fatalf("got %q, want %q", buf[:n], want)
		}
	}
	stop()
	stop() // idempotent
	if seen != total {
		t.Errorf("seen called %d times, want %d", seen, total)
	}
	// Nothing is relayed once stopped.
	write(total)
	sink.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := sink.Read(buf); err == nil {
		t.Errorf("relayed %q after stop", buf[:n])
	}
}
