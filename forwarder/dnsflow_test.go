package forwarder

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestDNSFlowLifetime drives the DNS forwarder through a real netstack: a
// query to the DNS address reaches a loopback upstream, which first sends
// an answer with another id (skipped) and then the right one; the flow
// counts as one and ends after its idle timeout; a query from the same
// port after that is answered alike, by a new flow.
func TestDNSFlowLifetime(t *testing.T) {
	up, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := up.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
				continue
			}
			var m dns.Msg
			m.SetReply(&q)
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
			good, _ := m.Pack()
			m.Id++
			m.Answer[0].(*dns.A).A = net.IPv4(192, 0, 2, 99)
			stale, _ := m.Pack()
			up.WriteToUDPAddrPort(stale, from)
			up.WriteToUDPAddrPort(good, from)
		}
	}()
	upstream := up.LocalAddr().(*net.UDPAddr).AddrPort()

	const idle = 500 * time.Millisecond
	f, _ := testForwarder(t)
	f.cfg.Nameservers = []netip.AddrPort{upstream}
	f.cfg.DNSIdleTimeout = idle
	st := newUDPTestStack(t, f)
	a := st.a

	query := func(srcPort, id uint16) {
		t.Helper()
		var q dns.Msg
		q.SetQuestion("host.example.test.", dns.TypeA)
		q.Id = id
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		st.inject(udpPacket(netip.AddrPortFrom(a.Guest, srcPort), netip.AddrPortFrom(a.DNS, 53), b))
	}
	// answer reads the next packet to the container: the answer to id.
	answer := func(id uint16) {
		t.Helper()
		ip := st.receive()
		if ip.Protocol() != uint8(header.UDPProtocolNumber) {
			t.Fatalf("got protocol %d, want UDP", ip.Protocol())
		}
		u := header.UDP(ip.Payload())
		if u.SourcePort() != 53 || netip.AddrFrom4(ip.SourceAddress().As4()) != a.DNS {
			t.Fatalf("answer from %v:%d, want the DNS address", ip.SourceAddress(), u.SourcePort())
		}
		var m dns.Msg
		if err := m.Unpack(u.Payload()); err != nil {
			t.Fatalf("answer: %v", err)
		}
		if m.Id != id || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
			t.Fatalf("answer %v, want id %d with 192.0.2.1 (the stale answer must be skipped)", &m, id)
		}
	}

	query(40000, 7)
	answer(7)
	query(40000, 8) // the same flow
	answer(8)
	if n := f.Flows(); n != 1 {
		t.Fatalf("%d flows counted, want 1", n)
	}
	deadline := time.Now().Add(idle + 5*time.Second)
	for f.Flows() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d flows still counted %v after the last query (idle timeout %v)", f.Flows(), idle+5*time.Second, idle)
		}
		time.Sleep(20 * time.Millisecond)
	}
	query(40000, 9)
	answer(9)
	if n := f.Flows(); n != 1 {
		t.Fatalf("%d flows counted after the new query, want 1", n)
	}
}
