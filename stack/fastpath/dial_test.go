package fastpath

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Published ports on the fast path (DialTCP), frame by frame on the
// socketpair harness: the test plays the container, which answers the
// flow's SYN, and a loopback TCP connection plays the published port's
// host side (the client's end and the accepted end DialTCP takes).
// The harness link has no virtio-net header: the flow's segments carry
// full checksums, which guest.decode checks.

// The container's address and port of the published service, and the
// clients it sees.
var (
	dialGuest4  = netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 8080)
	dialClient4 = netip.MustParseAddrPort("203.0.113.7:41234")
	dialGuest6  = netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzGuest6)), 8080)
	dialClient6 = netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzWorld6)), 41236)
)

// newDialFixture is a harness with the fast path on (its policy declines
// every SYN of the container's: only published flows here) that passes
// TCP frames to the test. Its cleanup closes the link and wants no flow
// left.
func newDialFixture(t *testing.T) *fastFixture {
	t.Helper()
	return newDialFixtureQueues(t, 1)
}

// newDialFixtureQueues is newDialFixture on a link of queues queues.
func newDialFixtureQueues(t *testing.T, queues int) *fastFixture {
	t.Helper()
	p := &fastPolicy{decline: true}
	h := newFrameHarnessWith(t, frameHarnessOptions{tcpFast: p, tcpFrames: true, queues: queues})
	f := &fastFixture{t: t, h: h, p: p}
	t.Cleanup(func() {
		f.closeHarness()
		if n := h.fast.TCPFlows(); n != 0 {
			t.Errorf("%d fast-path flows left after the link closed", n)
		}
		if n := p.asked.Load(); n != 0 {
			t.Errorf("the policy was asked about %d SYNs; the container sent none", n)
		}
	})
	return f
}

// teachGuestMAC sends the container's ARP request for the gateway and
// waits for the answer: the link has seen a frame from the container.
func (f *fastFixture) teachGuestMAC() {
	f.t.Helper()
	f.h.send(f.t, arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4))
	deadline := time.NewTimer(fastWait)
	defer deadline.Stop()
	for {
		select {
		case got := <-f.h.arpReplies:
			if string(got[:]) == string(fzGuestMAC) {
				if mac, ok := f.h.link.GuestMAC(); !ok || string(mac) != string(fzGuestMAC) {
					f.t.Fatalf("GuestMAC %v, %v after the container's ARP request, want %x", mac, ok, fzGuestMAC)
				}
				return
			}
		case <-deadline.C:
			f.t.Fatal("no ARP reply from the gateway")
		}
	}
}

// hostPair is a published port's host side: the client's end, and the
// accepted end that DialTCP takes. The test's cleanup closes both.
func hostPair(t *testing.T) (client, host *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ln.SetDeadline(time.Now().Add(fastWait))
	h, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return c, h
}

type dialResult struct {
	run func(context.Context)
	err error
}

// dial runs DialTCP in a goroutine; the test's cleanup waits for it.
func (f *fastFixture) dial(ctx context.Context, src, dst netip.AddrPort, host *net.TCPConn) <-chan dialResult {
	ch := make(chan dialResult, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		run, err := f.h.fast.DialTCP(ctx, src, dst, host)
		ch <- dialResult{run, err}
	}()
	t := f.t
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(3 * fastWait):
			t.Errorf("DialTCP did not return within %v of the test's end", 3*fastWait)
		}
	})
	return ch
}

// dialed waits for DialTCP's result.
func (f *fastFixture) dialed(ch <-chan dialResult) dialResult {
	f.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(fastWait):
		f.t.Fatalf("DialTCP did not return within %v", fastWait)
		return dialResult{}
	}
}

// carry runs run in a goroutine and returns a channel closed when it
// returns; the test's cleanup cancels it and waits for it.
func (f *fastFixture) carry(run func(context.Context)) (cancel context.CancelFunc, done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	d := make(chan struct{})
	go func() {
		defer close(d)
		run(ctx)
	}()
	t := f.t
	t.Cleanup(func() {
		cancel()
		select {
		case <-d:
		case <-time.After(3 * fastWait):
			t.Errorf("run did not return within %v of its context's end", 3*fastWait)
		}
	})
	return cancel, d
}

// waitDone waits for a channel to close.
func waitDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(fastWait):
		t.Fatalf("%s: not within %v", what, fastWait)
	}
}

// rxAny decodes a TCP frame to the container whatever its connection:
// the segment's source and destination, and the segment.
func rxAny(t *testing.T, fr []byte) (from, to netip.AddrPort, s rxSeg, ok bool) {
	t.Helper()
	eth := header.Ethernet(fr)
	var seg header.TCP
	var srcA, dstA netip.Addr
	switch eth.Type() {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(fr[14:])
		if !ip.IsValid(len(fr)-14) || !ip.IsChecksumValid() {
			t.Fatalf("a bad IPv4 packet to the container: % x", fr[14:min(len(fr), 34)])
		}
		srcA, dstA = netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
		seg = header.TCP(ip.Payload())
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(fr[14:])
		if !ip.IsValid(len(fr) - 14) {
			t.Fatalf("a bad IPv6 packet to the container: % x", fr[14:min(len(fr), 54)])
		}
		srcA, dstA = netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16())
		seg = header.TCP(ip.Payload())
	default:
		return from, to, s, false
	}
	if len(seg) < header.TCPMinimumSize || int(seg.DataOffset()) < header.TCPMinimumSize || int(seg.DataOffset()) > len(seg) {
		t.Fatalf("a bad TCP segment to the container: % x", seg[:min(len(seg), 20)])
	}
	if !tcpChecksumOK(srcA, dstA, seg) {
		t.Errorf("a segment with a bad TCP checksum: %v seq %d", seg.Flags(), seg.SequenceNumber())
	}
	s = rxSeg{seq: seg.SequenceNumber(), ack: seg.AckNumber(), flags: seg.Flags(), wnd: seg.WindowSize(), payload: seg.Payload()}
	if s.flags&flagSYN != 0 {
		s.opts = header.ParseSynOptions(seg.Options(), s.flags&flagACK != 0)
	}
	return netip.AddrPortFrom(srcA, seg.SourcePort()), netip.AddrPortFrom(dstA, seg.DestinationPort()), s, true
}

// expectSYN waits for a flow's SYN to the container's dst, from any
// source port other than those in skip (SYNs sent again by flows the
// test already answered), and returns the container's side of that
// connection, its own sequence numbers near the wrap.
func (f *fastFixture) expectSYN(dst netip.AddrPort, skip ...uint16) (*guest, rxSeg) {
	f.t.Helper()
	deadline := time.NewTimer(fastWait)
	defer deadline.Stop()
	for {
		select {
		case fr := <-f.h.tcpFrames:
			from, to, s, ok := rxAny(f.t, fr)
			if !ok || to != dst || s.flags&flagSYN == 0 {
				continue
			}
			skipped := false
			for _, p := range skip {
				skipped = skipped || from.Port() == p
			}
			if skipped {
				continue
			}
			g := &guest{f: f, t: f.t, src: dst, dst: from, iss: 0xffffff00 - uint32(from.Port()), wnd: 65535, mss: 1460, ws: 7}
			return g, s
		case <-deadline.C:
			f.t.Fatalf("no SYN to %v within %v (link tx %d txerr %d)", dst, fastWait, f.h.link.Stats().TxFrames.Load(), f.h.link.Stats().TxErrors.Load())
			return nil, rxSeg{}
		}
	}
}

// checkSYN checks the flow's SYN: SYN alone, no acknowledgment, our MSS
// and window scale and nothing else, an unscaled window, no data.
func checkSYN(t *testing.T, s rxSeg, mss uint16) {
	t.Helper()
	if s.flags != flagSYN || s.ack != 0 {
		t.Errorf("the flow's SYN %v, want SYN alone with ack 0", s)
	}
	if s.opts.MSS != mss || s.opts.WS != fastRcvShift || s.opts.SACKPermitted || s.opts.TS {
		t.Errorf("SYN options %+v, want MSS %d, WS %d, no SACK or timestamps", s.opts, mss, fastRcvShift)
	}
	if s.wnd != 65535 {
		t.Errorf("SYN window %d, want 65535 (never scaled)", s.wnd)
	}
	if len(s.payload) != 0 {
		t.Errorf("SYN with %d bytes of data", len(s.payload))
	}
}

// synAck answers the flow's SYN as the container, with g's MSS and
// window scale options.
func (g *guest) synAck(syn rxSeg) {
	g.t.Helper()
	g.irs, g.rcvNxt = syn.seq, syn.seq+1
	var opts []byte
	if g.mss != 0 {
		opts = append(opts, 2, 4, byte(g.mss>>8), byte(g.mss))
	}
	if g.ws >= 0 {
		opts = append(opts, 1, 3, 3, byte(g.ws))
	}
	g.f.h.send(g.t, g.frame(tcpSYN|tcpACK, g.iss, g.rcvNxt, opts, nil))
	g.sndNxt = g.iss + 1
}

// expectHandshakeACK waits for the flow's ACK of the SYN-ACK and checks
// it; wnd is the window field it must carry.
func (g *guest) expectHandshakeACK(wnd uint16) {
	g.t.Helper()
	a := g.expect("ACK of the SYN-ACK", func(s rxSeg) bool { return s.flags&flagSYN == 0 })
	if a.flags != flagACK || a.seq != g.irs+1 || a.ack != g.iss+1 || len(a.payload) != 0 {
		g.t.Errorf("answer to the SYN-ACK %v, want a bare ACK seq %d ack %d", a, g.irs+1, g.iss+1)
	}
	if a.wnd != wnd {
		g.t.Errorf("the handshake's ACK has window %d, want %d", a.wnd, wnd)
	}
}

// open dials from src to dst for host, plays the container's side of the
// handshake, and returns the container's connection and run.
func (f *fastFixture) open(ctx context.Context, src, dst netip.AddrPort, host *net.TCPConn) (*guest, func(context.Context)) {
	f.t.Helper()
	ch := f.dial(ctx, src, dst, host)
	g, syn := f.expectSYN(dst)
	if g.dst != src {
		f.t.Errorf("the SYN comes from %v, want the client's %v", g.dst, src)
	}
	g.synAck(syn)
	g.expectHandshakeACK(fastPendingMax >> fastRcvShift)
	r := f.dialed(ch)
	if r.err != nil {
		f.t.Fatalf("DialTCP: %v", r.err)
	}
	return g, r.run
}

// TestDialTCPUnavailable: the fast path off, or on before any frame
// from the container, cannot dial (an error that wraps
// ErrUnavailable: the netstack carries the connection), and leaves
// the host connection alone and no flow behind; a closing link refuses.
func TestDialTCPUnavailable(t *testing.T) {
	ctx := context.Background()
	t.Run("off", func(t *testing.T) {
		h := newFrameHarness(t)
		client, host := hostPair(t)
		run, err := h.fast.DialTCP(ctx, dialClient4, dialGuest4, host)
		if !errors.Is(err, ErrUnavailable) || run != nil {
			t.Fatalf("DialTCP with the fast path off: %v (run %v), want ErrUnavailable", err, run != nil)
		}
		checkHostUsable(t, client, host)
	})
	t.Run("no guest MAC", func(t *testing.T) {
		f := newDialFixture(t)
		client, host := hostPair(t)
		run, err := f.h.fast.DialTCP(ctx, dialClient4, dialGuest4, host)
		if !errors.Is(err, ErrUnavailable) || run != nil {
			t.Fatalf("DialTCP before any frame from the container: %v (run %v), want ErrUnavailable", err, run != nil)
		}
		if n := f.h.fast.TCPFlows(); n != 0 {
			t.Errorf("%d flows after a dial that could not start", n)
		}
		if n := f.h.fast.Stats().TCPFlows.Load(); n != 0 {
			t.Errorf("stats count %d fast-path flows, want 0", n)
		}
		select {
		case fr := <-f.h.tcpFrames:
			t.Errorf("a TCP frame to the container: % x", fr[:min(len(fr), 64)])
		case <-time.After(100 * time.Millisecond):
		}
		checkHostUsable(t, client, host)
	})
	t.Run("link closed", func(t *testing.T) {
		f := newDialFixture(t)
		f.teachGuestMAC()
		_, host := hostPair(t)
		f.closeHarness()
		run, err := f.h.fast.DialTCP(ctx, dialClient4, dialGuest4, host)
		if err == nil || run != nil {
			t.Fatalf("DialTCP on a closed link: %v (run %v), want an error", err, run != nil)
		}
		if n := f.h.fast.TCPFlows(); n != 0 {
			t.Errorf("%d flows on a closed link", n)
		}
	})
}

// checkHostUsable checks that a host connection a failed dial left to
// the caller still carries data both ways (no deadline, not closed).
func checkHostUsable(t *testing.T, client, host *net.TCPConn) {
	t.Helper()
	if _, err := client.Write([]byte("c")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	if got := readFull(t, host, 1); string(got) != "c" {
		t.Fatalf("host read %q", got)
	}
	if _, err := host.Write([]byte("h")); err != nil {
		t.Fatalf("the host connection a failed dial left cannot write: %v", err)
	}
	if got := readFull(t, client, 1); string(got) != "h" {
		t.Fatalf("client read %q", got)
	}
}

// TestDialTCPHandshake: the flow's SYN comes from the client's
// address and port to the container's, with our MSS and window scale;
// the container's SYN-ACK gets an ACK whose window is scaled as the
// SYN-ACK allows, DialTCP returns, and run carries data both ways
// (cut at the container's MSS) and the host's FIN, then the container's,
// which ends the flow and run.
func TestDialTCPHandshake(t *testing.T) {
	for i, tc := range []struct {
		name    string
		mss     uint16
		ws      int
		wantWnd uint16
		maxSeg  int
	}{
		{"window scale and MSS", 1460, 7, fastPendingMax >> fastRcvShift, 1460},
		{"window scale 0", 1000, 0, fastPendingMax >> fastRcvShift, 1000},
		{"no window scale", 1200, -1, 65535, 1200},
		{"no options", 0, -1, 65535, 536},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newDialFixture(t)
			f.teachGuestMAC()
			client, host := hostPair(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
			defer cancel()
			ch := f.dial(ctx, dialClient4, dialGuest4, host)
			g, syn := f.expectSYN(dialGuest4)
			if g.dst != dialClient4 {
				t.Errorf("the SYN comes from %v, want the client's %v", g.dst, dialClient4)
			}
			checkSYN(t, syn, fastMSS4)
			if n := f.h.fast.TCPFlows(); n != 1 {
				t.Errorf("%d flows while dialing, want 1", n)
			}
			g.mss, g.ws = tc.mss, tc.ws
			g.synAck(syn)
			g.expectHandshakeACK(tc.wantWnd)
			r := f.dialed(ch)
			if r.err != nil || r.run == nil {
				t.Fatalf("DialTCP after the SYN-ACK: %v (run %v)", r.err, r.run != nil)
			}
			_, done := f.carry(r.run)

			// The container's data reaches the client.
			up := randomBytes(uint64(200+i), 5000)
			g.sendData(up[:1000])
			g.sendData(up[1000:])
			if got := readFull(t, client, len(up)); !bytes.Equal(got, up) {
				t.Fatal("the client got other data than the container sent")
			}
			g.expect("ACK of the data", func(s rxSeg) bool { return s.ack == g.sndNxt })
			// The client's data reaches the container, at its MSS.
			down := randomBytes(uint64(300+i), 3*tc.maxSeg+17)
			if _, err := client.Write(down); err != nil {
				t.Fatal(err)
			}
			g.recv(len(down), tc.maxSeg, false, true)
			if !bytes.Equal(g.stream, down) {
				t.Fatal("the container got other data than the client sent")
			}
			// The client half-closes: FIN to the container, which still
			// sends, then closes too.
			client.CloseWrite()
			g.recv(len(down), tc.maxSeg, true, true)
			g.sendData([]byte("last words"))
			g.fin()
			got, err := readEnd(t, client)
			if string(got) != "last words" || err != io.EOF {
				t.Errorf("the client read %q then %v, want \"last words\" then EOF", got, err)
			}
			waitDone(t, done, "run's return after both FINs")
			if n := f.h.fast.TCPFlows(); n != 0 {
				t.Errorf("%d flows after both FINs", n)
			}
			if n := f.h.fast.Stats().TCPFlows.Load(); n != 1 {
				t.Errorf("stats count %d fast-path flows, want 1", n)
			}
		})
	}
}

// TestDialTCPGuestSpeaksFirst: a server that writes and closes at
// once (its data and FIN may come before run starts) reaches the client
// whole, then EOF; the client's close ends the flow.
func TestDialTCPGuestSpeaksFirst(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	client, host := hostPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	ch := f.dial(ctx, dialClient4, dialGuest4, host)
	g, syn := f.expectSYN(dialGuest4)
	g.synAck(syn)
	g.send(tcpACK|tcpPSH|tcpFIN, g.sndNxt, []byte("203.0.113.7:41234\n"))
	g.sndNxt += uint32(len("203.0.113.7:41234\n")) + 1
	r := f.dialed(ch)
	if r.err != nil {
		t.Fatalf("DialTCP: %v", r.err)
	}
	g.expect("ACK of the data and FIN", func(s rxSeg) bool { return s.ack == g.sndNxt })
	_, done := f.carry(r.run)
	got, err := readEnd(t, client)
	if string(got) != "203.0.113.7:41234\n" || err != io.EOF {
		t.Fatalf("the client read %q then %v", got, err)
	}
	client.Close()
	g.recv(0, 1460, true, false)
	g.ack()
	waitDone(t, done, "run's return after both FINs")
	f.waitFlows(0)
}

// TestDialTCPRefused: the container's RST|ACK to the SYN fails the
// dial with ErrRefused; the flow is gone, nothing more goes to the
// container, and the host connection is left to the caller.
func TestDialTCPRefused(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	_, host := hostPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	ch := f.dial(ctx, dialClient4, dialGuest4, host)
	g, syn := f.expectSYN(dialGuest4)
	// A RST without ACK, or acknowledging something else, is not an
	// answer to this SYN (RFC 9293 3.10.7.3).
	f.h.send(t, g.frame(tcpRST, 0, 0, nil, nil))
	f.h.send(t, g.frame(tcpRST|tcpACK, 0, syn.seq+7, nil, nil))
	// Then the refusal.
	f.h.send(t, g.frame(tcpRST|tcpACK, 0, syn.seq+1, nil, nil))
	r := f.dialed(ch)
	if !errors.Is(r.err, ErrRefused) || r.run != nil {
		t.Fatalf("DialTCP after the container's RST: %v (run %v), want ErrRefused", r.err, r.run != nil)
	}
	if n := f.h.fast.TCPFlows(); n != 0 {
		t.Errorf("%d flows after a refused dial", n)
	}
	// No SYN again, no RST in answer.
	g.nothing(500*time.Millisecond, "after the refusal")
	// The caller resets the client, as forwardTCP does.
	host.SetLinger(0)
	if err := host.Close(); err != nil {
		t.Errorf("closing the host connection after a refused dial: %v", err)
	}
}

// TestDialTCPNoAnswer: an unanswered SYN comes again, the same; the
// dial ends with its context (canceled, or at its deadline) or at
// fastDialTimeout with ErrTimeout, and the flow is gone.
func TestDialTCPNoAnswer(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		f := newDialFixture(t)
		f.teachGuestMAC()
		_, host := hostPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := f.dial(ctx, dialClient4, dialGuest4, host)
		g, syn := f.expectSYN(dialGuest4)
		for i := range 2 {
			again := g.expect("the SYN again", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
			if again.seq != syn.seq || again.flags != flagSYN || again.opts != syn.opts {
				t.Errorf("SYN %v %+v sent again (%d) as %v %+v", syn, syn.opts, i+1, again, again.opts)
			}
		}
		cancel()
		r := f.dialed(ch)
		if !errors.Is(r.err, context.Canceled) || r.run != nil {
			t.Errorf("DialTCP canceled: %v (run %v), want context.Canceled", r.err, r.run != nil)
		}
		f.waitFlows(0)
		g.nothing(500*time.Millisecond, "after the dial ended")
	})
	t.Run("deadline", func(t *testing.T) {
		f := newDialFixture(t)
		f.teachGuestMAC()
		_, host := hostPair(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ch := f.dial(ctx, dialClient4, dialGuest4, host)
		f.expectSYN(dialGuest4)
		r := f.dialed(ch)
		if !errors.Is(r.err, context.DeadlineExceeded) || r.run != nil {
			t.Errorf("DialTCP at its context's deadline: %v (run %v), want context.DeadlineExceeded", r.err, r.run != nil)
		}
		f.waitFlows(0)
	})
	t.Run("fastDialTimeout", func(t *testing.T) {
		f := newDialFixture(t)
		f.teachGuestMAC()
		_, host := hostPair(t)
		ch := f.dial(context.Background(), dialClient4, dialGuest4, host)
		g, syn := f.expectSYN(dialGuest4)
		var r dialResult
		select {
		case r = <-ch:
		case <-time.After(fastDialTimeout + fastWait):
			t.Fatalf("DialTCP did not return within %v", fastDialTimeout+fastWait)
		}
		if !errors.Is(r.err, ErrTimeout) || r.run != nil {
			t.Errorf("DialTCP unanswered: %v (run %v), want ErrTimeout", r.err, r.run != nil)
		}
		f.waitFlows(0)
		n := 0
		for {
			select {
			case fr := <-f.h.tcpFrames:
				if _, _, s, ok := rxAny(t, fr); ok && s.flags == flagSYN && s.seq == syn.seq {
					n++
				}
				continue
			default:
			}
			break
		}
		if n < 3 {
			t.Errorf("the SYN came again %d times in %v, want several (backoff from %v)", n, fastDialTimeout, fastRTOMin)
		}
		g.nothing(300*time.Millisecond, "after the dial timed out")
	})
}

// TestDialTCPUnacceptableACK: a container that answers the SYN with
// an ACK of something else (a Linux socket in TIME-WAIT on this 4-tuple
// does, when the SYN's ISN is below its old rcv_nxt) gets a RST at that
// ACK's number (RFC 9293 3.10.7.3), which ends the TIME-WAIT; the SYN
// sent again then opens the connection.
func TestDialTCPUnacceptableACK(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	client, host := hostPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	ch := f.dial(ctx, dialClient4, dialGuest4, host)
	g, syn := f.expectSYN(dialGuest4)
	// TIME-WAIT's answer: an ACK of the old connection's end.
	old := syn.seq - 1<<20
	f.h.send(t, g.frame(tcpACK, 0x1234567, old, nil, nil))
	rst := g.expect("RST for the unacceptable ACK", func(s rxSeg) bool { return s.flags&flagRST != 0 })
	if rst.flags != flagRST || rst.seq != old {
		t.Errorf("answer to an unacceptable ACK %v, want RST (no ACK) at seq %d", rst, old)
	}
	again := g.expect("the SYN again", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	if again.seq != syn.seq {
		t.Errorf("SYN again at %d, want %d", again.seq, syn.seq)
	}
	g.synAck(syn)
	g.expectHandshakeACK(fastPendingMax >> fastRcvShift)
	r := f.dialed(ch)
	if r.err != nil {
		t.Fatalf("DialTCP: %v", r.err)
	}
	f.carry(r.run)
	g.sendData([]byte("reused"))
	if got := readFull(t, client, 6); string(got) != "reused" {
		t.Errorf("client read %q", got)
	}
}

// TestDialTCPPortTaken: a client port that a flow to the same guest
// port holds already is not used again (another client of another
// published port that reaches the same guest port may repeat it): the
// second flow's SYN comes from another port, as does one asked for port
// 0, and the flows are independent.
func TestDialTCPPortTaken(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	ctx, cancel := context.WithTimeout(context.Background(), 6*fastWait)
	defer cancel()
	client1, host1 := hostPair(t)
	g1, run1 := f.open(ctx, dialClient4, dialGuest4, host1)
	f.carry(run1)

	client2, host2 := hostPair(t)
	ch := f.dial(ctx, dialClient4, dialGuest4, host2)
	g2, syn2 := f.expectSYN(dialGuest4, dialClient4.Port())
	if g2.dst.Addr() != dialClient4.Addr() || g2.dst.Port() == dialClient4.Port() || g2.dst.Port() == 0 {
		t.Errorf("the second flow's SYN comes from %v, want %v at another port", g2.dst, dialClient4.Addr())
	}
	g2.synAck(syn2)
	g2.expectHandshakeACK(fastPendingMax >> fastRcvShift)
	r := f.dialed(ch)
	if r.err != nil {
		t.Fatalf("the second DialTCP: %v", r.err)
	}
	f.carry(r.run)

	client3, host3 := hostPair(t)
	ch = f.dial(ctx, netip.AddrPortFrom(dialClient4.Addr(), 0), dialGuest4, host3)
	g3, syn3 := f.expectSYN(dialGuest4, dialClient4.Port(), g2.dst.Port())
	if g3.dst.Addr() != dialClient4.Addr() || g3.dst.Port() == 0 {
		t.Errorf("the SYN of a dial from port 0 comes from %v", g3.dst)
	}
	g3.synAck(syn3)
	g3.expectHandshakeACK(fastPendingMax >> fastRcvShift)
	if r := f.dialed(ch); r.err != nil {
		t.Fatalf("the dial from port 0: %v", r.err)
	} else {
		f.carry(r.run)
	}
	if n := f.h.fast.TCPFlows(); n != 3 {
		t.Errorf("%d flows, want 3", n)
	}

	for i, c := range []struct {
		g      *guest
		client *net.TCPConn
	}{{g1, client1}, {g2, client2}, {g3, client3}} {
		msg := []byte{'a' + byte(i)}
		c.g.sendData(msg)
		if got := readFull(t, c.client, 1); !bytes.Equal(got, msg) {
			t.Errorf("client %d read %q, want %q", i+1, got, msg)
		}
		c.client.Write([]byte{'A' + byte(i)})
		c.g.recv(1, 1460, false, true)
		if c.g.stream[0] != 'A'+byte(i) {
			t.Errorf("flow %d got %q", i+1, c.g.stream)
		}
	}
	noMore(t, client1)
	noMore(t, client2)
}

// TestDialTCPIPv6: the same over IPv6: the SYN's MSS is the IPv6
// one, data both ways, FINs both ways.
func TestDialTCPIPv6(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	client, host := hostPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	ch := f.dial(ctx, dialClient6, dialGuest6, host)
	g, syn := f.expectSYN(dialGuest6)
	if g.dst != dialClient6 {
		t.Errorf("the SYN comes from %v, want %v", g.dst, dialClient6)
	}
	checkSYN(t, syn, fastMSS6)
	g.synAck(syn)
	g.expectHandshakeACK(fastPendingMax >> fastRcvShift)
	r := f.dialed(ch)
	if r.err != nil {
		t.Fatalf("DialTCP: %v", r.err)
	}
	_, done := f.carry(r.run)
	g.exchange(client, "client", randomBytes(66, 7000), randomBytes(67, 10000))
	waitDone(t, done, "run's return after both FINs")
	f.waitFlows(0)
}

// TestDialTCPCancelRun: run's context ending resets the container's
// connection (RST at the next sequence number) and the client's, and
// run returns.
func TestDialTCPCancelRun(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	client, host := hostPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	g, run := f.open(ctx, dialClient4, dialGuest4, host)
	stop, done := f.carry(run)
	client.Write([]byte("data"))
	g.recv(4, 1460, false, true)
	stop()
	rst := g.expect("RST", func(s rxSeg) bool { return s.flags&flagRST != 0 })
	if rst.seq != g.rcvNxt {
		t.Errorf("RST %v at seq %d, want %d", rst, rst.seq, g.rcvNxt)
	}
	waitDone(t, done, "run's return after its context ended")
	if _, err := readEnd(t, client); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the client's end ended with %v, want a reset", err)
	}
	f.waitFlows(0)
}

// TestDialTCPLinkCloseDuringRun: closing the link ends a published
// flow: run returns, and the client's connection ends.
func TestDialTCPLinkCloseDuringRun(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	client, host := hostPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	g, run := f.open(ctx, dialClient4, dialGuest4, host)
	_, done := f.carry(run)
	g.sendData([]byte("hi"))
	readFull(t, client, 2)
	f.closeHarness()
	waitDone(t, done, "run's return after the link closed")
	if b, err := readEnd(t, client); len(b) != 0 || err == nil {
		t.Errorf("the client read %q, %v after the link closed", b, err)
	}
	if n := f.h.fast.TCPFlows(); n != 0 {
		t.Errorf("%d flows after the link closed", n)
	}
}

// TestDialTCPLinkCloseDuringDial: closing the link while a dial
// waits for the container's answer ends the dial with an error at once
// (not at fastDialTimeout), and the flow is gone.
func TestDialTCPLinkCloseDuringDial(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	_, host := hostPair(t)
	ch := f.dial(context.Background(), dialClient4, dialGuest4, host)
	f.expectSYN(dialGuest4)
	f.closeHarness()
	start := time.Now()
	select {
	case r := <-ch:
		if r.err == nil || r.run != nil {
			t.Errorf("DialTCP on a link that closed: %v (run %v), want an error", r.err, r.run != nil)
		}
	case <-time.After(fastWait):
		// Wait for it anyway, to say how it ended.
		select {
		case r := <-ch:
			t.Errorf("DialTCP returned %v only %v after the link closed (fastDialTimeout %v): a closed flow does not end the dial", r.err, time.Since(start).Round(100*time.Millisecond), fastDialTimeout)
		case <-time.After(fastDialTimeout + fastWait):
			t.Errorf("DialTCP did not return within %v of the link's close", fastDialTimeout+2*fastWait)
		}
	}
	if n := f.h.fast.TCPFlows(); n != 0 {
		t.Errorf("%d flows after the link closed", n)
	}
}

// TestDialTCPAnswerRacesCancel: the container's answer (SYN-ACK or
// RST) and the end of the dial's context come at once, in both orders,
// many times: DialTCP returns every time (the flow's answer and the
// dial's own close must not wait on each other), no flow is left, and
// the read loop lives on.
func TestDialTCPAnswerRacesCancel(t *testing.T) {
	f := newDialFixture(t)
	f.teachGuestMAC()
	const rounds = 200
	var outcomes [4]map[string]int // by round kind: the dial's results
	for k := range outcomes {
		outcomes[k] = map[string]int{}
	}
	defer func() {
		t.Logf("the dial's results by kind (cancel first, answer first; refusal in kinds 2 and 3): %v", outcomes)
	}()
	for i := range rounds {
		_, host := hostPair(t)
		src := netip.AddrPortFrom(dialClient4.Addr(), uint16(20000+i))
		ctx, cancel := context.WithCancel(context.Background())
		ch := f.dial(ctx, src, dialGuest4, host)
		var g *guest
		var syn rxSeg
		for g == nil || g.dst != src {
			g, syn = f.expectSYN(dialGuest4)
		}
		refuse := i%4 >= 2
		answer := func() {
			if refuse {
				f.h.send(t, g.frame(tcpRST|tcpACK, 0, syn.seq+1, nil, nil))
			} else {
				g.synAck(syn)
			}
		}
		if i%2 == 0 {
			cancel()
			answer()
		} else {
			// The read loop takes the answer some tens of
			// microseconds after it was sent: cancel around then.
			answer()
			spin(time.Duration(i%40) * 5 * time.Microsecond)
			cancel()
		}
		var r dialResult
		select {
		case r = <-ch:
		case <-time.After(fastWait):
			f.h.abandon()
			t.Fatalf("round %d: DialTCP did not return within %v of its answer and its context's end:\n%s", i, fastWait, goroutineDump())
		}
		outcomes[i%4][fmt.Sprint(r.err)]++
		switch {
		case r.err == nil:
			if refuse {
				t.Fatalf("round %d: DialTCP succeeded on a refusal", i)
			}
			stop, done := f.carry(r.run)
			stop()
			waitDone(t, done, "run's return with its context ended")
		case refuse && !errors.Is(r.err, ErrRefused) && !errors.Is(r.err, context.Canceled):
			t.Errorf("round %d: DialTCP refused and canceled: %v", i, r.err)
		case !refuse && !errors.Is(r.err, context.Canceled):
			t.Errorf("round %d: DialTCP answered and canceled: %v", i, r.err)
		}
		deadline := time.Now().Add(fastWait)
		for f.h.fast.TCPFlows() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d flows after the dial (%v) and run", i, f.h.fast.TCPFlows(), r.err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if !f.readLoopIdle() {
		f.h.abandon()
		t.Fatalf("the read loop is stuck:\n%s", goroutineDump())
	}
}

// spin waits for d without sleeping (a sleep lasts much longer).
func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}
