package main

// The helper's clients of -udp, -dns and -flows, and the host servers
// they talk to (a UDP echo server and a DNS server).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// udpLatencyResult is what the udplatency and dnsq clients print.
type udpLatencyResult struct {
	N     int     `json:"n"`
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// Lost: requests that got no answer within the client's timeout
	// (not in the percentiles).
	Lost int `json:"lost"`
}

// parallelResult is what the rrpar client prints.
type parallelResult struct {
	Conns   int     `json:"conns"`
	RTTs    int     `json:"rtts"`
	Seconds float64 `json:"seconds"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	Err     string  `json:"err,omitempty"`
}

// helperClient runs the clients added for issue 18's figures; ok is false
// for a mode it does not know.
//
//	udplatency ADDR N SIZE     N UDP round trips of SIZE bytes on one socket
//	dnsq ADDR N                N DNS A lookups, each from a new UDP socket
//	rrpar ADDR CONNS SECS SIZE CONNS TCP connections, each making round
//	                           trips of SIZE bytes for SECS seconds
func helperClient(args []string) (ok bool, err error) {
	atoi := func(i int) int {
		if i >= len(args) {
			err = fmt.Errorf("%s: missing argument %d", args[0], i)
			return 0
		}
		n, cerr := strconv.Atoi(args[i])
		if cerr != nil && err == nil {
			err = cerr
		}
		return n
	}
	if len(args) < 3 {
		return false, nil
	}
	switch args[0] {
	case "udplatency":
		n, size := atoi(2), atoi(3)
		if err != nil {
			return true, err
		}
		r, err := udpRoundTrips(args[1], n, size)
		if err != nil {
			return true, err
		}
		printJSON(r)
		return true, nil
	case "dnsq":
		n := atoi(2)
		if err != nil {
			return true, err
		}
		r, err := dnsLookups(args[1], n)
		if err != nil {
			return true, err
		}
		printJSON(r)
		return true, nil
	case "rrpar":
		conns, secs, size := atoi(2), atoi(3), atoi(4)
		if err != nil {
			return true, err
		}
		r, err := parallelRoundTrips(args[1], conns, time.Duration(secs)*time.Second, size)
		if err != nil {
			return true, err
		}
		printJSON(r)
		return true, nil
	}
	return false, nil
}

// percentiles of sorted durations, in µs.
func quantileUS(d []time.Duration, q float64) float64 {
	return float64(d[int(q*float64(len(d)-1))].Nanoseconds()) / 1e3
}

// udpRoundTrips: after 100 warm-up round trips, n datagrams of size
// bytes (a sequence number in the first 8) each answered by an echo
// server at addr before the next is sent; a datagram with no answer
// within 500 ms is lost and not timed. More than 10% lost (or 50) ends
// the run with an error.
func udpRoundTrips(addr string, n, size int) (udpLatencyResult, error) {
	if size < 8 {
		size = 8
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		return udpLatencyResult{}, err
	}
	defer c.Close()
	msg := make([]byte, size)
	buf := make([]byte, size+64)
	const warmup = 100
	maxLost := min(50, n/10+5)
	rtts := make([]time.Duration, 0, n)
	lost := 0
	for seq := uint64(0); len(rtts) < n; seq++ {
		binary.BigEndian.PutUint64(msg, seq)
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return udpLatencyResult{}, err
		}
		c.SetReadDeadline(t0.Add(500 * time.Millisecond))
		for {
			m, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					return udpLatencyResult{}, err
				}
				lost++
				if lost > maxLost {
					return udpLatencyResult{}, fmt.Errorf("%d datagrams without an answer within 500 ms (after %d answered)", lost, len(rtts))
				}
				break
			}
			if m < 8 || binary.BigEndian.Uint64(buf) != seq {
				continue // a late answer to an earlier datagram
			}
			if seq >= warmup {
				rtts = append(rtts, time.Since(t0))
			}
			break
		}
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	return udpLatencyResult{N: len(rtts), P50us: quantileUS(rtts, 0.5), P99us: quantileUS(rtts, 0.99), Lost: lost}, nil
}

// dnsLookups: after 50 warm-up lookups, n lookups of a distinct name's A
// record, each on a new UDP socket (socket, connect, send, receive the
// answer, close: what a stub resolver does per lookup), timed from the
// socket's creation to the answer; an answer must carry the query's id and
// one A record. A lookup with no answer within 2 s is lost; more than 20
// lost ends the run with an error.
func dnsLookups(addr string, n int) (udpLatencyResult, error) {
	const warmup = 50
	rtts := make([]time.Duration, 0, n)
	lost := 0
	buf := make([]byte, 4096)
	start := time.Now()
	for i := 0; len(rtts) < n; i++ {
		if time.Since(start) > 2*time.Minute {
			return udpLatencyResult{}, fmt.Errorf("2 min deadline after %d lookups", len(rtts))
		}
		q := new(dns.Msg)
		q.SetQuestion(fmt.Sprintf("h%d.bench.test.", i), dns.TypeA)
		q.Id = uint16(i)
		wire, err := q.Pack()
		if err != nil {
			return udpLatencyResult{}, err
		}
		t0 := time.Now()
		c, err := net.Dial("udp", addr)
		if err != nil {
			return udpLatencyResult{}, err
		}
		c.SetDeadline(t0.Add(2 * time.Second))
		var rerr error
		if _, err := c.Write(wire); err != nil {
			rerr = err
		}
		for rerr == nil {
			m, err := c.Read(buf)
			if err != nil {
				rerr = err
				break
			}
			var r dns.Msg
			if r.Unpack(buf[:m]) != nil || r.Id != q.Id {
				continue
			}
			if a, ok := answerA(&r); !ok || !a.Equal(dnsAnswer) {
				rerr = fmt.Errorf("answer %s with %d records, not the bench server's one A %v", dns.RcodeToString[r.Rcode], len(r.Answer), dnsAnswer)
			}
			break
		}
		d := time.Since(t0)
		c.Close()
		if rerr != nil {
			var ne net.Error
			if !errors.As(rerr, &ne) || !ne.Timeout() {
				return udpLatencyResult{}, rerr
			}
			lost++
			if lost > 20 {
				return udpLatencyResult{}, fmt.Errorf("%d lookups without an answer within 2 s (after %d answered)", lost, len(rtts))
			}
			continue
		}
		if i >= warmup {
			rtts = append(rtts, d)
		}
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	return udpLatencyResult{N: len(rtts), P50us: quantileUS(rtts, 0.5), P99us: quantileUS(rtts, 0.99), Lost: lost}, nil
}

// answerA is the address of r's only answer, an A record.
func answerA(r *dns.Msg) (net.IP, bool) {
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return nil, false
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		return nil, false
	}
	return a.A, true
}

// parallelRoundTrips opens conns TCP connections (TCP_NODELAY) to an echo
// server at addr, each makes 10 warm-up round trips, then all make round
// trips of size bytes, one outstanding per connection, for d; the rate is
// the round trips completed in d, the percentiles over every one of them.
func parallelRoundTrips(addr string, conns int, d time.Duration, size int) (parallelResult, error) {
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for i := 0; i < conns; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return parallelResult{}, fmt.Errorf("connection %d: %w", i+1, err)
		}
		c.(*net.TCPConn).SetNoDelay(true)
		cs = append(cs, c)
	}
	var (
		mu      sync.Mutex
		all     []time.Duration
		firstEr error
		wg      sync.WaitGroup
	)
	startGate := make(chan struct{})
	var ready sync.WaitGroup
	var t0 time.Time
	for _, c := range cs {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, size)
			buf := make([]byte, size)
			rtt := func() error {
				if _, err := c.Write(msg); err != nil {
					return err
				}
				_, err := io.ReadFull(c, buf)
				return err
			}
			c.SetDeadline(time.Now().Add(d + 30*time.Second))
			var err error
			for i := 0; i < 10 && err == nil; i++ {
				err = rtt()
			}
			ready.Done()
			<-startGate
			var mine []time.Duration
			end := t0.Add(d)
			for err == nil {
				s := time.Now()
				if !s.Before(end) {
					break
				}
				if err = rtt(); err == nil {
					mine = append(mine, time.Since(s))
				}
			}
			mu.Lock()
			all = append(all, mine...)
			if err != nil && firstEr == nil {
				firstEr = err
			}
			mu.Unlock()
		}()
	}
	ready.Wait()
	t0 = time.Now()
	close(startGate)
	wg.Wait()
	el := time.Since(t0)
	if len(all) == 0 {
		if firstEr == nil {
			firstEr = errors.New("no round trip completed")
		}
		return parallelResult{}, firstEr
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r := parallelResult{Conns: conns, RTTs: len(all), Seconds: el.Seconds(), P50us: quantileUS(all, 0.5), P99us: quantileUS(all, 0.99)}
	if firstEr != nil {
		r.Err = firstEr.Error()
	}
	return r, nil
}

// udpEcho answers every datagram to 127.0.0.1:PORT with itself.
type udpEcho struct {
	pc   net.PacketConn
	done chan struct{}
}

func newUDPEcho() (*udpEcho, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &udpEcho{pc: pc, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return e, nil
}

func (e *udpEcho) port() int { return e.pc.LocalAddr().(*net.UDPAddr).Port }

func (e *udpEcho) close() {
	e.pc.Close()
	select {
	case <-e.done:
	case <-time.After(5 * time.Second):
	}
}

// dnsAnswer is the A record every query gets.
var dnsAnswer = net.IPv4(192, 0, 2, 53)

// dnsServer is the bench's DNS server on the host: one A record for any
// name, TTL 0.
type dnsServer struct {
	srv  *dns.Server
	ip   string // the loopback address it listens on, port 53
	done chan struct{}
}

// startDNSServer listens on 127.0.0.1:53, or 127.0.0.53:53 when that is
// taken (binding port 53 needs root or CAP_NET_BIND_SERVICE).
func startDNSServer() (*dnsServer, error) {
	var errs []error
	for _, ip := range []string{"127.0.0.1", "127.0.0.53"} {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "53"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		started := make(chan struct{})
		s := &dnsServer{ip: ip, done: make(chan struct{})}
		s.srv = &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) }, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			r := new(dns.Msg)
			r.SetReply(q)
			if len(q.Question) == 1 && q.Question[0].Qtype == dns.TypeA {
				r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0}, A: dnsAnswer}}
			}
			w.WriteMsg(r)
		})}
		go func() {
			defer close(s.done)
			if err := s.srv.ActivateAndServe(); err != nil && !stopping.Load() {
				fmt.Fprintln(os.Stderr, "bench: DNS server:", err)
			}
		}()
		select {
		case <-started:
			return s, nil
		case <-s.done:
			errs = append(errs, fmt.Errorf("DNS server on %s:53 stopped at once", ip))
		case <-time.After(5 * time.Second):
			s.close()
			errs = append(errs, fmt.Errorf("DNS server on %s:53 not started after 5 s", ip))
		}
	}
	return nil, errors.Join(errs...)
}

func (s *dnsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.srv.ShutdownContext(ctx)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
	}
}
