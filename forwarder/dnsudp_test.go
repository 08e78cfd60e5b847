package forwarder

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// fakeShortcut is the fast path as the forwarder sees it: it records the
// services registered and the datagrams written to the container, and
// refuses those larger than mtu, as WriteUDP refuses what would need IP
// fragments.
type fakeShortcut struct {
	mtu    int
	writes chan fakeWrite

	mu       sync.Mutex
	services map[netip.AddrPort]UDPService
	added    []netip.AddrPort
	removed  []netip.AddrPort
	refused  int
}

type fakeWrite struct {
	src, dst netip.AddrPort
	payload  []byte
}

func newFakeShortcut(mtu int) *fakeShortcut {
	return &fakeShortcut{mtu: mtu, writes: make(chan fakeWrite, 1024), services: map[netip.AddrPort]UDPService{}}
}

func (s *fakeShortcut) AddUDPFlow(src, dst netip.AddrPort, sink UDPSink) func() { return func() {} }

// WatchHost refuses: UDP flows then keep their goroutine.
func (s *fakeShortcut) WatchHost(syscall.Conn, func()) (func(), error) {
	return nil, errors.New("no loop")
}

func (s *fakeShortcut) AddUDPService(dst netip.AddrPort, svc UDPService) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.services[dst] = svc
	s.added = append(s.added, dst)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			delete(s.services, dst)
			s.removed = append(s.removed, dst)
		})
	}
}

func (s *fakeShortcut) WriteUDP(src, dst netip.AddrPort, payload []byte) bool {
	if 28+len(payload) > s.mtu {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		return false
	}
	s.writes <- fakeWrite{src: src, dst: dst, payload: append([]byte(nil), payload...)}
	return true
}

func (s *fakeShortcut) WriteUDPBatch(src, dst netip.AddrPort, run []byte, seg int) bool { return false }

// query hands a query to the service on addr, as the read loop does
// (in two pieces, as a frame's header and rest may be).
func (s *fakeShortcut) query(t *testing.T, addr, src netip.AddrPort, msg []byte) {
	t.Helper()
	s.mu.Lock()
	svc := s.services[addr]
	s.mu.Unlock()
	if svc == nil {
		t.Fatalf("no service on %v", addr)
	}
	cut := min(len(msg), 7)
	svc(src, [][]byte{msg[:cut], msg[cut:]})
}

// next returns the next datagram written to the container.
func (s *fakeShortcut) next(t *testing.T) fakeWrite {
	t.Helper()
	select {
	case w := <-s.writes:
		return w
	case <-time.After(5 * time.Second):
		t.Fatal("nothing written to the container")
		return fakeWrite{}
	}
}

// quiet fails if anything is written to the container for a while.
func (s *fakeShortcut) quiet(t *testing.T) {
	t.Helper()
	select {
	case w := <-s.writes:
		t.Fatalf("unexpected datagram to the container: %v -> %v %x", w.src, w.dst, w.payload)
	case <-time.After(200 * time.Millisecond):
	}
}

var (
	testDNS4 = netip.MustParseAddrPort("10.0.2.3:53")
	testDNS6 = netip.MustParseAddrPort("[fd00::3]:53")
)

// newDNSTestForwarder is a forwarder with a fake shortcut and a real
// event loop, asking upstreams.
func newDNSTestForwarder(t *testing.T, sc *fakeShortcut, upstreams ...netip.AddrPort) *Forwarder {
	t.Helper()
	loop, err := eventloop.New()
	if err != nil {
		t.Fatal(err)
	}
	go loop.Run()
	t.Cleanup(func() { loop.Stop(); loop.Close() })
	f := New(Config{
		Policy:      Policy{DNS: testDNS4.Addr(), DNS6: testDNS6.Addr()},
		Nameservers: upstreams,
		UDPShortcut: sc,
		Poller:      loop,
	})
	t.Cleanup(f.Close)
	if f.dns == nil {
		t.Fatal("no DNS service")
	}
	return f
}

// testUpstream is a DNS server on loopback: answer makes the datagrams it
// sends for each query (nil: none).
type testUpstream struct {
	addr netip.AddrPort
	mu   sync.Mutex
	ids  map[uint16]int
	from map[netip.AddrPort]int
	n    int
}

func startUpstream(t *testing.T, answer func(q *dns.Msg) []*dns.Msg) *testUpstream {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	u := &testUpstream{addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), ids: map[uint16]int{}, from: map[netip.AddrPort]int{}}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			u.mu.Lock()
			u.ids[q.Id]++
			u.from[from]++
			u.n++
			u.mu.Unlock()
			for _, m := range answer(&q) {
				b, err := m.Pack()
				if err != nil {
					panic(err)
				}
				c.WriteToUDPAddrPort(b, from)
			}
		}
	}()
	return u
}

func (u *testUpstream) stats() (queries, ids, ports int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n, len(u.ids), len(u.from)
}

// aAnswer answers an A query with 192.0.2.1.
func aAnswer(q *dns.Msg) *dns.Msg {
	var m dns.Msg
	m.SetReply(q)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
	return &m
}

func packQuery(t *testing.T, name string, qtype uint16, id uint16) []byte {
	t.Helper()
	var q dns.Msg
	q.SetQuestion(name, qtype)
	q.Id = id
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitSlots waits until no query holds a place.
func waitSlots(t *testing.T, f *Forwarder) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.dnsSlots) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d queries still hold a place", len(f.dnsSlots))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDNSServiceRegistration(t *testing.T) {
	loop, err := eventloop.New()
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Close()
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want []netip.AddrPort
	}{
		{"both", func(*Config) {}, []netip.AddrPort{testDNS4, testDNS6}},
		{"ipv4 only", func(c *Config) { c.Policy.DNS6 = netip.Addr{} }, []netip.AddrPort{testDNS4}},
		{"dns disabled", func(c *Config) { c.Policy.DisableDNS = true }, nil},
		{"no loop", func(c *Config) { c.Poller = nil }, nil},
		{"no shortcut", func(c *Config) { c.UDPShortcut = nil }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newFakeShortcut(1500)
			cfg := Config{Policy: Policy{DNS: testDNS4.Addr(), DNS6: testDNS6.Addr()}, UDPShortcut: sc, Poller: loop}
			tc.cfg(&cfg)
			f := New(cfg)
			if fmt.Sprint(sc.added) != fmt.Sprint(tc.want) {
				t.Errorf("services on %v, want %v", sc.added, tc.want)
			}
			f.Close()
			if fmt.Sprint(sc.removed) != fmt.Sprint(tc.want) {
				t.Errorf("services removed at Close: %v, want %v", sc.removed, tc.want)
			}
		})
	}
}

// TestDNSServiceAnswers sends many queries, each from a port of its own
// and all with the same ID, to the service: each is answered once, past
// the stack (WriteUDP), from the DNS address, with the client's ID; the
// upstream first sends forgeries (the right ID for another question, and
// another ID), which are dropped. A loopback upstream sees one socket, with
// the IDs drawn at random; with a socket per query, one port each.
func TestDNSServiceAnswers(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			up := startUpstream(t, func(q *dns.Msg) []*dns.Msg {
				other := aAnswer(q)
				other.Question[0].Name = "other." + q.Question[0].Name
				other.Answer[0].(*dns.A).A = net.IPv4(192, 0, 2, 66)
				wrongID := aAnswer(q)
				wrongID.Id++
				wrongID.Answer[0].(*dns.A).A = net.IPv4(192, 0, 2, 99)
				return []*dns.Msg{other, wrongID, aAnswer(q)}
			})
			sc := newFakeShortcut(1500)
			f := newDNSTestForwarder(t, sc, up.addr)
			f.dns.sharedLoopback = shared
			const n, batch, id = 300, 50, 0x4242
			guest := netip.MustParseAddr("10.0.2.100")
			seen := map[uint16]bool{}
			for i := 0; i < n; i += batch {
				for j := i; j < i+batch; j++ {
					name := fmt.Sprintf("q%d.example.test.", j)
					sc.query(t, testDNS4, netip.AddrPortFrom(guest, uint16(20000+j)), packQuery(t, name, dns.TypeA, id))
				}
				for range batch {
					w := sc.next(t)
					if w.src != testDNS4 || w.dst.Addr() != guest {
						t.Fatalf("answer %v -> %v, want from %v to the guest", w.src, w.dst, testDNS4)
					}
					j := int(w.dst.Port()) - 20000
					var m dns.Msg
					if err := m.Unpack(w.payload); err != nil {
						t.Fatal(err)
					}
					if m.Id != id || len(m.Question) != 1 || m.Question[0].Name != fmt.Sprintf("q%d.example.test.", j) ||
						len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
						t.Fatalf("answer to query %d: %v", j, &m)
					}
					if seen[w.dst.Port()] {
						t.Fatalf("query %d answered twice", j)
					}
					seen[w.dst.Port()] = true
				}
			}
			sc.quiet(t)
			waitSlots(t, f)
			queries, ids, ports := up.stats()
			if queries != n {
				t.Errorf("upstream saw %d queries, want %d", queries, n)
			}
			if ids < n*9/10 {
				t.Errorf("upstream saw %d IDs for %d queries all with ID %#x: want them drawn at random", ids, n, id)
			}
			// A socket per query: a port each, but for the kernel's
			// reuse of a closed socket's port now and then.
			wantOpen := 0
			if shared && ports != 1 {
				t.Errorf("upstream saw %d source ports, want 1 socket", ports)
			} else if !shared && ports < n*9/10 {
				t.Errorf("upstream saw %d source ports, want one a query (%d)", ports, n)
			}
			if shared {
				wantOpen = 1
			}
			f.dns.mu.Lock()
			open := len(f.dns.socks)
			f.dns.mu.Unlock()
			if open != wantOpen {
				t.Errorf("%d upstream sockets open after the answers, want %d", open, wantOpen)
			}
		})
	}
}

// TestDNSServiceIPv6 answers a query to the IPv6 DNS address from there.
func TestDNSServiceIPv6(t *testing.T) {
	up := startUpstream(t, func(q *dns.Msg) []*dns.Msg { return []*dns.Msg{aAnswer(q)} })
	sc := newFakeShortcut(1500)
	newDNSTestForwarder(t, sc, up.addr)
	src := netip.MustParseAddrPort("[fd00::100]:30000")
	sc.query(t, testDNS6, src, packQuery(t, "v6.example.test.", dns.TypeA, 7))
	w := sc.next(t)
	if w.src != testDNS6 || w.dst != src {
		t.Fatalf("answer %v -> %v, want %v -> %v", w.src, w.dst, testDNS6, src)
	}
}

// TestDNSServiceTruncates: an answer too large for the link's MTU reaches
// the resolver as its header and question with TC set (and the OPT
// record), so that it asks again over TCP.
func TestDNSServiceTruncates(t *testing.T) {
	big := strings.Repeat("x", 250)
	up := startUpstream(t, func(q *dns.Msg) []*dns.Msg {
		m := aAnswer(q)
		m.Answer = nil
		for range 12 {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{big}})
		}
		if opt := q.IsEdns0(); opt != nil {
			m.SetEdns0(4096, false)
		}
		return []*dns.Msg{m}
	})
	sc := newFakeShortcut(1500)
	f := newDNSTestForwarder(t, sc, up.addr)
	for _, edns := range []bool{true, false} {
		var q dns.Msg
		q.SetQuestion("big.example.test.", dns.TypeTXT)
		q.Id = 0x1234
		q.RecursionDesired = true
		if edns {
			q.SetEdns0(4096, false)
		}
		b, _ := q.Pack()
		src := netip.MustParseAddrPort("10.0.2.100:40000")
		sc.query(t, testDNS4, src, b)
		w := sc.next(t)
		var m dns.Msg
		if err := m.Unpack(w.payload); err != nil {
			t.Fatal(err)
		}
		if !m.Truncated || !m.Response || m.Id != 0x1234 || !m.RecursionDesired || len(m.Answer) != 0 ||
			len(m.Question) != 1 || m.Question[0] != q.Question[0] {
			t.Fatalf("edns=%v: got %v, want the header and question with TC", edns, &m)
		}
		if (m.IsEdns0() != nil) != edns {
			t.Errorf("edns=%v: OPT record %v", edns, m.IsEdns0())
		}
	}
	sc.mu.Lock()
	refused := sc.refused
	sc.mu.Unlock()
	if refused != 2 {
		t.Errorf("%d datagrams refused, want the 2 whole answers", refused)
	}
	waitSlots(t, f)
}

func TestTruncatedReply(t *testing.T) {
	query := packQuery(t, "a.example.test.", dns.TypeA, 9)
	// An answer whose records cannot be read: the query's question.
	bad := append([]byte(nil), query...)
	bad[2] |= 0x80                            // QR
	binary.BigEndian.PutUint16(bad[6:], 1)    // one answer...
	bad = append(bad, 0xc0, 0xff, 0, 1, 0, 1) // ...with a bad pointer
	var m dns.Msg
	if err := m.Unpack(truncatedReply(query, bad, true)); err != nil {
		t.Fatal(err)
	}
	if !m.Truncated || m.Id != 9 || len(m.Question) != 1 || m.Question[0].Name != "a.example.test." || len(m.Answer) != 0 {
		t.Fatalf("got %v", &m)
	}
	if truncatedReply(query, bad[:5], true) != nil {
		t.Error("a reply shorter than a header made something")
	}
}

// TestDNSServiceFailover: the upstreams are asked in turn: one that
// refuses (ICMP port unreachable) at once, one that does not answer after
// the attempt's timeout; SERVFAIL when none answers.
func TestDNSServiceFailover(t *testing.T) {
	dead := func() netip.AddrPort {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).AddrPort()
	}()
	silent := startUpstream(t, func(*dns.Msg) []*dns.Msg { return nil })
	good := startUpstream(t, func(q *dns.Msg) []*dns.Msg { return []*dns.Msg{aAnswer(q)} })
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			sc := newFakeShortcut(1500)
			f := newDNSTestForwarder(t, sc, dead, silent.addr, good.addr)
			f.dns.sharedLoopback = shared
			const timeout = 300 * time.Millisecond
			f.dns.timeout = timeout
			src := netip.MustParseAddrPort("10.0.2.100:40000")
			for i := range 3 { // the shared sockets are reused, or made again after an error
				start := time.Now()
				sc.query(t, testDNS4, src, packQuery(t, "f.example.test.", dns.TypeA, uint16(i)))
				w := sc.next(t)
				var m dns.Msg
				if err := m.Unpack(w.payload); err != nil {
					t.Fatal(err)
				}
				if m.Id != uint16(i) || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
					t.Fatalf("got %v, want the third upstream's answer", &m)
				}
				if d := time.Since(start); d < timeout || d > timeout+2*time.Second {
					t.Errorf("answered after %v, want the silent upstream's timeout (%v) first", d, timeout)
				}
			}
			waitSlots(t, f)

			sc2 := newFakeShortcut(1500)
			f2 := newDNSTestForwarder(t, sc2, dead, silent.addr)
			f2.dns.sharedLoopback = shared
			f2.dns.timeout = timeout
			sc2.query(t, testDNS4, src, packQuery(t, "f.example.test.", dns.TypeA, 77))
			var m dns.Msg
			if err := m.Unpack(sc2.next(t).payload); err != nil {
				t.Fatal(err)
			}
			if m.Id != 77 || m.Rcode != dns.RcodeServerFailure {
				t.Fatalf("got %v, want SERVFAIL", &m)
			}
			waitSlots(t, f2)
		})
	}
	// None configured: SERVFAIL at once.
	sc := newFakeShortcut(1500)
	newDNSTestForwarder(t, sc)
	sc.query(t, testDNS4, netip.MustParseAddrPort("10.0.2.100:40000"), packQuery(t, "f.example.test.", dns.TypeA, 5))
	var m dns.Msg
	if err := m.Unpack(sc.next(t).payload); err != nil || m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("got %v (%v), want SERVFAIL", &m, err)
	}
}

type testNames struct{}

func (testNames) Answer(q *dns.Msg) *dns.Msg {
	if len(q.Question) != 1 || q.Question[0].Name != "member.test." {
		return nil
	}
	return aAnswer(q)
}

// TestDNSServiceEdges: local names are answered without the upstreams;
// datagrams shorter than a header are ignored; queries after Close get
// nothing, and the ones in flight then are dropped.
func TestDNSServiceEdges(t *testing.T) {
	silent := startUpstream(t, func(*dns.Msg) []*dns.Msg { return nil })
	sc := newFakeShortcut(1500)
	f := newDNSTestForwarder(t, sc, silent.addr)
	f.cfg.Names = testNames{}
	src := netip.MustParseAddrPort("10.0.2.100:40000")
	sc.query(t, testDNS4, src, packQuery(t, "member.test.", dns.TypeA, 3))
	var m dns.Msg
	if err := m.Unpack(sc.next(t).payload); err != nil || m.Id != 3 || len(m.Answer) != 1 {
		t.Fatalf("got %v (%v), want the local answer", &m, err)
	}
	if n, _, _ := silent.stats(); n != 0 {
		t.Errorf("the upstream was asked %d times for a local name", n)
	}
	sc.query(t, testDNS4, src, make([]byte, dnsHeaderSize-1))
	sc.quiet(t)
	if len(f.dnsSlots) != 0 {
		t.Fatalf("a short datagram holds a place")
	}

	// In flight at Close.
	svc := sc.services[testDNS4]
	for i := range 10 {
		sc.query(t, testDNS4, src, packQuery(t, "x.example.test.", dns.TypeA, uint16(i)))
	}
	f.Close()
	if len(f.dns.socks) != 0 {
		t.Errorf("%d upstream sockets open after Close", len(f.dns.socks))
	}
	svc(src, [][]byte{packQuery(t, "x.example.test.", dns.TypeA, 99)}) // a frame read before the removal
	sc.quiet(t)
}
