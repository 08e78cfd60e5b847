package world

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNSBigName has a TXT record of DNSBigTXTStrings strings of 250 bytes
// each: an answer larger than a 1500-byte MTU.
const (
	DNSBigName       = "big.example.test."
	DNSBigTXTStrings = 12
)

// Fake DNS data served by World.DNS.
const (
	DNSName   = "example.test."
	DNSTXT    = "rootlessnet-fake"
	dnsTTL    = 60
	drainTime = 5 * time.Second
)

// DNS answers served for DNSName.
var (
	DNSAddrV4 = netip.MustParseAddr("198.51.100.7")
	DNSAddrV6 = netip.MustParseAddr("2001:db8::7")
)

// addrPort converts a listener/conn address to a netip.AddrPort with IPv4
// addresses unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// streamServer owns a listener, its accept goroutine and one goroutine per
// connection. Cleanup closes the listener and every open connection and
// waits for all goroutines.
type streamServer struct {
	l      net.Listener
	handle func(*net.TCPConn)

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

func (w *World) serveStream(t testing.TB, addr string, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	l, err := w.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("world: listen tcp %s: %v", addr, err)
	}
	s := &streamServer{l: l, handle: handle, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.close)
	return addrPort(l.Addr())
}

func (s *streamServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed (or broken): the owner's cleanup is the end
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.handle(c.(*net.TCPConn))
		}()
	}
}

func (s *streamServer) close() {
	s.mu.Lock()
	s.closed = true
	s.l.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// plainReader hides ReadFrom/WriteTo so io.Copy uses a plain buffer loop
// (no splice of a socket into itself).
type plainReader struct{ io.Reader }

// TCPEcho starts a TCP echo server inside the world on addr (e.g.
// "198.51.100.1:0") and returns its address. When the client half-closes,
// the server finishes echoing and then half-closes its side (CloseWrite), so
// half-close is observable in both directions.
func (w *World) TCPEcho(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	return w.serveStream(t, addr, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		if _, err := io.CopyBuffer(c, plainReader{c}, buf); err != nil {
			return
		}
		c.CloseWrite()
		// Wait (bounded) for the client to close so the final Close does not
		// turn into a reset while the client still reads.
		drain(c)
	})
}

// TCPSink starts a server that reads until EOF, then writes the 32-byte
// SHA-256 of everything it read followed by the 8-byte big-endian byte
// count, and closes.
func (w *World) TCPSink(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	return w.serveStream(t, addr, func(c *net.TCPConn) {
		h := sha256.New()
		buf := make([]byte, 256<<10)
		n, err := io.CopyBuffer(h, plainReader{c}, buf)
		if err != nil {
			return
		}
		out := h.Sum(nil)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
		if _, err := c.Write(out); err != nil {
			return
		}
		c.CloseWrite()
		drain(c)
	})
}

// SinkReply is the reply TCPSink sends for data.
func SinkReply(data []byte) []byte {
	sum := sha256.Sum256(data)
	return binary.BigEndian.AppendUint64(sum[:], uint64(len(data)))
}

// TCPWhoAmI starts a server that writes the client's address as seen inside
// the world, as netip.AddrPort text plus "\n" ("198.51.100.2:40000\n",
// "[2001:db8::2]:40000\n"; IPv4 never in ::ffff: form), and closes.
func (w *World) TCPWhoAmI(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	return w.serveStream(t, addr, func(c *net.TCPConn) {
		if _, err := io.WriteString(c, addrPort(c.RemoteAddr()).String()+"\n"); err != nil {
			return
		}
		c.CloseWrite()
		drain(c)
	})
}

// drain reads and discards until EOF, error or drainTime.
func drain(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(drainTime))
	io.Copy(io.Discard, plainReader{c})
}

// UDPEcho starts a UDP server that sends every datagram back to its sender.
func (w *World) UDPEcho(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	pc, err := w.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("world: listen udp %s: %v", addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// e.g. ECONNREFUSED from an earlier ICMP error: keep going.
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return
				}
				continue
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return addrPort(pc.LocalAddr())
}

// DNSQuery is one question received by the fake DNS server.
type DNSQuery struct {
	Name    string // as received, e.g. "example.test."
	Type    uint16 // dns.TypeA, dns.TypeAAAA, ...
	Network string // "udp" or "tcp"
	From    netip.AddrPort
}

// DNSLog records the questions the fake DNS server received. It is safe for
// concurrent use.
type DNSLog struct {
	mu sync.Mutex
	qs []DNSQuery
}

func (l *DNSLog) add(q DNSQuery) {
	l.mu.Lock()
	l.qs = append(l.qs, q)
	l.mu.Unlock()
}

// Queries returns a copy of the questions received so far.
func (l *DNSLog) Queries() []DNSQuery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]DNSQuery(nil), l.qs...)
}

// Len returns the number of questions received so far.
func (l *DNSLog) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.qs)
}

type dnsHandler struct{ log *DNSLog }

func (h *dnsHandler) ServeDNS(rw dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	from := addrPort(rw.RemoteAddr())
	network := "udp"
	if _, ok := rw.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	for _, q := range r.Question {
		h.log.add(DNSQuery{Name: q.Name, Type: q.Qtype, Network: network, From: from})
	}
	if len(r.Question) != 1 || r.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeFormatError
		rw.WriteMsg(m)
		return
	}
	q := r.Question[0]
	if strings.EqualFold(q.Name, DNSBigName) {
		if q.Qtype == dns.TypeTXT {
			txt := make([]string, DNSBigTXTStrings)
			for i := range txt {
				txt[i] = strings.Repeat(string(rune('a'+i)), 250)
			}
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: dnsTTL},
				Txt: txt,
			})
		}
	} else if strings.EqualFold(q.Name, DNSName) {
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: dnsTTL}
		switch q.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: DNSAddrV4.AsSlice()})
		case dns.TypeAAAA:
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: DNSAddrV6.AsSlice()})
		}
	} else {
		m.Rcode = dns.RcodeNameError
	}
	m.Extra = append(m.Extra, &dns.TXT{
		Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: dnsTTL},
		Txt: []string{DNSTXT},
	})
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	rw.WriteMsg(m)
}

// DNS starts a fake DNS server on UDP and TCP of the same port inside the
// world. It answers A example.test. with 198.51.100.7 and AAAA with
// 2001:db8::7, TXT big.example.test. with 3000 bytes of strings (over
// UDP too: no truncation), NXDOMAIN for any other name, and always adds a
// TXT record "rootlessnet-fake" (owner: the question name) in the
// additional section so callers can tell the upstream answer arrived
// unchanged. Port 0 picks a free port.
func (w *World) DNS(t testing.TB, addr string) (netip.AddrPort, *DNSLog) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("world: DNS address %q: %v", addr, err)
	}
	var (
		l  net.Listener
		pc net.PacketConn
	)
	for attempt := 0; ; attempt++ {
		l, err = w.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("world: DNS listen tcp %s: %v", addr, err)
		}
		udpAddr := net.JoinHostPort(host, fmt.Sprint(addrPort(l.Addr()).Port()))
		pc, err = w.ListenPacket("udp", udpAddr)
		if err == nil {
			break
		}
		l.Close()
		if port != "0" || attempt == 20 {
			t.Fatalf("world: DNS listen udp %s: %v", udpAddr, err)
		}
	}

	log := &DNSLog{}
	h := &dnsHandler{log: log}
	servers := []*dns.Server{
		{PacketConn: pc, Handler: h},
		{Listener: l, Handler: h},
	}
	var wg sync.WaitGroup
	started := make(chan struct{}, len(servers))
	errc := make(chan error, len(servers))
	for _, s := range servers {
		s.NotifyStartedFunc = func() { started <- struct{}{} }
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- s.ActivateAndServe()
		}()
	}
	shutdown := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			s.ShutdownContext(ctx) // errors if it never started; the conns are closed below anyway
		}
		pc.Close()
		l.Close()
		wg.Wait()
	}
	for range servers {
		select {
		case <-started:
		case err := <-errc:
			shutdown()
			t.Fatalf("world: DNS server: %v", err)
		case <-time.After(10 * time.Second):
			shutdown()
			t.Fatalf("world: DNS server did not start")
		}
	}
	t.Cleanup(shutdown)
	return addrPort(l.Addr()), log
}
