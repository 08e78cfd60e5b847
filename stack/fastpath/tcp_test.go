package fastpath

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The TCP fast path on the socketpair harness: the test plays the
// container with raw frames, and a loopback listener plays the host peer
// that the policy dials. The harness link has no virtio-net header, so
// the fast path's segments carry full checksums and are cut at the MSS.

// fastWait bounds every wait for a frame or a host socket event.
const fastWait = 5 * time.Second

// fastPolicy is a TCPPolicy that dials the test's listener.
type fastPolicy struct {
	addr    string
	decline bool  // ok=false: the SYN goes to the stack
	dialErr error // the dial fails with this
	sndBuf  int   // SO_SNDBUF of the dialed sockets, if > 0
	// timeout bounds the connect (5 s if 0); results gets what Result
	// was told, when set.
	timeout time.Duration
	results chan error

	asked, taken, dials, dones, doubleDones atomic.Int32
}

func (p *fastPolicy) TakeTCP(src, dst netip.AddrPort) (TCPDial, bool) {
	p.asked.Add(1)
	if p.decline {
		return TCPDial{}, false
	}
	p.taken.Add(1)
	to, err := netip.ParseAddrPort(p.addr)
	if err != nil {
		panic(err)
	}
	var once atomic.Bool
	timeout := p.timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	var result func(error)
	if p.results != nil {
		result = func(err error) { p.results <- err }
	}
	return TCPDial{
		To: to,
		Control: func(_, _ string, c syscall.RawConn) error {
			p.dials.Add(1)
			if p.dialErr != nil {
				return p.dialErr
			}
			if p.sndBuf > 0 {
				c.Control(func(fd uintptr) {
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, p.sndBuf)
				})
			}
			return nil
		},
		Timeout: timeout,
		Result:  result,
		Done: func() {
			if !once.CompareAndSwap(false, true) {
				p.doubleDones.Add(1)
				return
			}
			p.dones.Add(1)
		},
	}, true
}

// fastFixture is a harness with the fast path on and the listener.
type fastFixture struct {
	t        *testing.T
	h        *frameHarness
	p        *fastPolicy
	accepted chan *net.TCPConn
}

func newFastFixture(t *testing.T, setup func(*fastPolicy)) *fastFixture {
	t.Helper()
	return newFastFixtureQueues(t, 1, setup)
}

// newFastFixtureQueues is newFastFixture on a link of queues queues.
func newFastFixtureQueues(t *testing.T, queues int, setup func(*fastPolicy)) *fastFixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	accepted := make(chan *net.TCPConn, 64)
	stop, acceptDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c.(*net.TCPConn):
			case <-stop:
				c.Close()
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		ln.Close()
		<-acceptDone
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})
	p := &fastPolicy{addr: ln.Addr().String()}
	if setup != nil {
		setup(p)
	}
	h := newFrameHarnessWith(t, frameHarnessOptions{tcpFast: p, tcpFrames: true, queues: queues})
	f := &fastFixture{t: t, h: h, p: p, accepted: accepted}
	// Runs before the harness's own cleanup: closing the link ends every
	// flow and waits for its goroutines, and each flow the policy handed
	// over is done exactly once.
	t.Cleanup(func() {
		f.closeHarness()
		if n := h.fast.TCPFlows(); n != 0 {
			t.Errorf("%d fast-path flows left after the link closed", n)
		}
		if d, k := p.dones.Load(), p.taken.Load(); d != k {
			t.Errorf("done ran for %d of %d flows the policy handed over", d, k)
		}
		if n := p.doubleDones.Load(); n != 0 {
			t.Errorf("done ran %d extra times", n)
		}
		if n, k := h.fast.Stats().TCPFlows.Load(), p.taken.Load(); n != uint64(k) {
			t.Errorf("stats count %d fast-path flows, the policy handed over %d", n, k)
		}
	})
	return f
}

// closeHarness closes the harness, or reports a link that cannot close
// (a deadlocked flow) and abandons it rather than hang the test binary.
//
// The read loop must be idle first: the harness closes as network.Close
// does, and gVisor's Stack.Wait holds the stack's lock while it waits for
// the link's read loop, which deadlocks if that loop is still inside the
// stack with a frame read before the close (here: a late segment of a
// finished flow, which the stack answers with RST).
func (f *fastFixture) closeHarness() {
	f.h.mu.Lock()
	closing := f.h.closing
	f.h.mu.Unlock()
	if !closing && !f.readLoopIdle() {
		f.h.abandon()
		f.t.Errorf("the read loop is stuck:\n%s", goroutineDump())
		return
	}
	done := make(chan struct{})
	go func() {
		f.h.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * fastWait):
		f.h.abandon()
		f.t.Errorf("the link did not close within %v (a flow is deadlocked):\n%s", 2*fastWait, goroutineDump())
	}
}

// readLoopIdle is checkAlive without failing: an ARP request from a
// fresh MAC is answered once the read loop has handled every frame sent
// before it.
func (f *fastFixture) readLoopIdle() bool {
	if f.h.readErr.Load() != nil {
		return true // ended: nothing in flight
	}
	n := f.h.seq.Add(1)
	mac := [6]byte{0x02, 0xfb, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	f.h.peer.SetWriteDeadline(time.Now().Add(fastWait))
	if _, err := f.h.peer.Write(arpFrame(fzBroadcast, mac[:], 1, mac[:], fzGuest4, make([]byte, 6), fzGateway4)); err != nil {
		return false
	}
	deadline := time.NewTimer(fastWait)
	defer deadline.Stop()
	for {
		select {
		case got := <-f.h.arpReplies:
			if got == mac {
				return true
			}
		case <-deadline.C:
			return false
		}
	}
}

// goroutineDump returns the stacks of all goroutines.
func goroutineDump() []byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// sub is f for a subtest: failures and cleanups go to t.
func (f *fastFixture) sub(t *testing.T) *fastFixture {
	c := *f
	c.t = t
	return &c
}

// accept returns the host end of the next connection the fast path
// dialed; the test's cleanup closes it.
func (f *fastFixture) accept() *net.TCPConn {
	f.t.Helper()
	select {
	case c := <-f.accepted:
		f.t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(fastWait):
		f.t.Fatalf("the listener accepted nothing within %v (dials %d)", fastWait, f.p.dials.Load())
		return nil
	}
}

// waitFlows waits until the link counts n fast-path flows.
func (f *fastFixture) waitFlows(n int) {
	f.t.Helper()
	deadline := time.Now().Add(fastWait)
	for f.h.fast.TCPFlows() != n {
		if time.Now().After(deadline) {
			f.t.Fatalf("%d fast-path flows after %v, want %d", f.h.fast.TCPFlows(), fastWait, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitDones waits until done ran n times.
func (f *fastFixture) waitDones(n int32) {
	f.t.Helper()
	deadline := time.Now().Add(fastWait)
	for f.p.dones.Load() != n {
		if time.Now().After(deadline) {
			f.t.Fatalf("done ran %d times after %v, want %d", f.p.dones.Load(), fastWait, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// rxSeg is a segment the container received.
type rxSeg struct {
	seq, ack uint32
	flags    header.TCPFlags
	wnd      uint16
	opts     header.TCPSynOptions
	payload  []byte
}

func (s rxSeg) String() string {
	return fmt.Sprintf("[%v seq %d ack %d wnd %d len %d]", s.flags, s.seq, s.ack, s.wnd, len(s.payload))
}

// guest is one connection of the container's.
type guest struct {
	f        *fastFixture
	t        *testing.T
	src, dst netip.AddrPort // the container's end, the peer it dials

	iss, sndNxt uint32 // the container's sequence numbers
	irs, rcvNxt uint32 // the flow's
	wnd         uint16 // the window field the container sends
	mss         uint16 // offered in the SYN; 0: none
	ws          int    // window scale offered; -1: none
	sackPerm    bool   // SACK permitted offered

	stream []byte // the flow's data received in order
	gotFIN bool
	// q is the link's queue the container sends on (as the kernel
	// picks one per flow for a multi-queue TAP).
	q int
}

// guest makes a connection from the container's port to the peer's; the
// container's sequence numbers start just short of the wrap.
func (f *fastFixture) guest(v6 bool, port uint16) *guest {
	g := &guest{f: f, t: f.t, iss: 0xffffff00 - uint32(port), wnd: 65535, mss: 1460, ws: -1}
	if v6 {
		g.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzGuest6)), port)
		g.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzWorld6)), 80)
	} else {
		g.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), port)
		g.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzWorld4)), 80)
	}
	return g
}

func (g *guest) frame(flags uint8, seq, ack uint32, opts, data []byte) []byte {
	s := segWithWnd(g.src.Port(), g.dst.Port(), seq, ack, flags, g.wnd, opts, data)
	if g.src.Addr().Is6() {
		return toGateway6(ipv6Packet(g.src.Addr().AsSlice(), g.dst.Addr().AsSlice(), 6, 64, s, 16))
	}
	return toGateway4(ipv4Packet(g.src.Addr().AsSlice(), g.dst.Addr().AsSlice(), 6, nil, s, 16))
}

// send sends a segment acknowledging what the container received.
func (g *guest) send(flags uint8, seq uint32, data []byte) {
	g.t.Helper()
	g.f.h.sendOn(g.t, g.q, g.frame(flags, seq, g.rcvNxt, nil, data))
}

func (g *guest) syn() {
	g.t.Helper()
	var opts []byte
	if g.mss != 0 {
		opts = append(opts, 2, 4, byte(g.mss>>8), byte(g.mss))
	}
	if g.sackPerm {
		opts = append(opts, 1, 1, 4, 2)
	}
	if g.ws >= 0 {
		opts = append(opts, 1, 3, 3, byte(g.ws))
	}
	g.f.h.sendOn(g.t, g.q, g.frame(tcpSYN, g.iss, 0, opts, nil))
}

// sendData sends data in one segment and advances the container's
// sequence.
func (g *guest) sendData(data []byte) {
	g.t.Helper()
	g.send(tcpACK|tcpPSH, g.sndNxt, data)
	g.sndNxt += uint32(len(data))
}

// fin sends the container's FIN and returns the segment that
// acknowledges it.
func (g *guest) fin() rxSeg {
	g.t.Helper()
	g.send(tcpACK|tcpFIN, g.sndNxt, nil)
	g.sndNxt++
	return g.expect("ACK of the FIN", func(s rxSeg) bool { return s.ack == g.sndNxt })
}

// exchange sends up from the container to peer (named who in failures)
// and down from peer, which then closes its write side; the container's
// FIN follows, and peer must see EOF.
func (g *guest) exchange(peer *net.TCPConn, who string, up, down []byte) {
	t := g.t
	t.Helper()
	g.sendData(up)
	if got := readFull(t, peer, len(up)); !bytes.Equal(got, up) {
		t.Fatalf("the %s got other data", who)
	}
	peer.Write(down)
	peer.CloseWrite()
	g.recv(len(down), 1460, true, true)
	if !bytes.Equal(g.stream, down) {
		t.Fatal("the container got other data")
	}
	g.fin()
	if _, err := readEnd(t, peer); err != io.EOF {
		t.Errorf("the %s's end ended with %v, want EOF", who, err)
	}
}

func (g *guest) ack() {
	g.t.Helper()
	g.send(tcpACK, g.sndNxt, nil)
}

// decode checks a frame to the container and returns its segment, or
// false if it belongs to another connection.
func (g *guest) decode(f []byte) (rxSeg, bool) {
	g.t.Helper()
	var s rxSeg
	eth := header.Ethernet(f)
	var seg header.TCP
	var srcA, dstA netip.Addr
	switch eth.Type() {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(f[14:])
		if !ip.IsValid(len(f)-14) || !ip.IsChecksumValid() || int(ip.TotalLength()) != len(f)-14 {
			g.t.Fatalf("a bad IPv4 packet to the container: % x", f[14:min(len(f), 34)])
		}
		srcA, dstA = netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
		seg = header.TCP(ip.Payload())
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(f[14:])
		if !ip.IsValid(len(f)-14) || int(ip.PayloadLength()) != len(f)-14-40 || ip.NextHeader() != 6 {
			g.t.Fatalf("a bad IPv6 packet to the container: % x", f[14:min(len(f), 54)])
		}
		srcA, dstA = netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16())
		seg = header.TCP(ip.Payload())
	default:
		return s, false
	}
	if srcA != g.dst.Addr() || dstA != g.src.Addr() || seg.SourcePort() != g.dst.Port() || seg.DestinationPort() != g.src.Port() {
		return s, false
	}
	if string(eth.DestinationAddress()) != string(fzGuestMAC) || string(eth.SourceAddress()) != string(fzGatewayMAC) {
		g.t.Errorf("segment from MAC %v to %v, want the gateway's to the container's", eth.SourceAddress(), eth.DestinationAddress())
	}
	if int(seg.DataOffset()) < 20 || int(seg.DataOffset()) > len(seg) {
		g.t.Fatalf("a segment with data offset %d in %d bytes", seg.DataOffset(), len(seg))
	}
	if !tcpChecksumOK(srcA, dstA, seg) {
		g.t.Errorf("a segment with a bad TCP checksum: %v seq %d, %d bytes", seg.Flags(), seg.SequenceNumber(), len(seg))
	}
	s = rxSeg{
		seq: seg.SequenceNumber(), ack: seg.AckNumber(), flags: seg.Flags(), wnd: seg.WindowSize(),
		payload: seg.Payload(),
	}
	if s.flags&flagSYN != 0 {
		s.opts = header.ParseSynOptions(seg.Options(), true)
	}
	return s, true
}

// next returns the next segment of this connection, or false at the
// deadline.
func (g *guest) next(deadline time.Time) (rxSeg, bool) {
	g.t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case f := <-g.f.h.tcpFrames:
			if s, ok := g.decode(f); ok {
				return s, true
			}
		case <-timer.C:
			return rxSeg{}, false
		}
	}
}

// expect waits for a segment that matches, passing over others (the
// fast path's timer may send something again meanwhile).
func (g *guest) expect(what string, match func(rxSeg) bool) rxSeg {
	g.t.Helper()
	deadline := time.Now().Add(fastWait)
	var passed []rxSeg
	for {
		s, ok := g.next(deadline)
		if !ok {
			g.t.Fatalf("no %s within %v; passed over %v (link tx %d txerr %d, frames dropped %d)", what, fastWait, passed,
				g.f.h.link.Stats().TxFrames.Load(), g.f.h.link.Stats().TxErrors.Load(), g.f.h.tcpDropped.Load())
		}
		if match(s) {
			return s
		}
		passed = append(passed, s)
	}
}

// nothing checks that no segment of this connection comes for a while.
func (g *guest) nothing(d time.Duration, what string) {
	g.t.Helper()
	if s, ok := g.next(time.Now().Add(d)); ok {
		g.t.Errorf("%s: got %v", what, s)
	}
}

// connect runs the handshake and returns the SYN-ACK and the host's end.
func (g *guest) connect() (rxSeg, *net.TCPConn) {
	g.t.Helper()
	g.syn()
	sa := g.expect("SYN-ACK", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	if sa.flags != flagSYN|flagACK || sa.ack != g.iss+1 {
		g.t.Fatalf("answer to the SYN %v, want SYN|ACK acknowledging %d", sa, g.iss+1)
	}
	g.irs, g.rcvNxt, g.sndNxt = sa.seq, sa.seq+1, g.iss+1
	g.ack()
	return sa, g.f.accept()
}

// recv takes the connection's data until it holds n bytes (and a FIN if
// fin), acknowledging every segment if ack, and checks that every
// segment comes in order and holds at most maxSeg bytes.
func (g *guest) recv(n, maxSeg int, fin, ack bool) {
	g.t.Helper()
	deadline := time.Now().Add(fastWait)
	for len(g.stream) < n || fin && !g.gotFIN {
		s, ok := g.next(deadline)
		if !ok {
			g.t.Fatalf("%d of %d bytes (FIN %v) within %v", len(g.stream), n, g.gotFIN, fastWait)
		}
		if s.flags&(flagSYN|flagRST) != 0 {
			g.t.Fatalf("%v while data was coming", s)
		}
		if len(s.payload) > maxSeg {
			g.t.Errorf("a segment of %d bytes, above the MSS %d", len(s.payload), maxSeg)
		}
		if s.ack != g.sndNxt {
			g.t.Errorf("segment %v acknowledges %d, want %d", s, s.ack, g.sndNxt)
		}
		end := s.seq + uint32(len(s.payload))
		switch {
		case len(s.payload) == 0 && s.flags&flagFIN == 0:
			continue // an ACK or a window update
		case seqLT(s.seq, g.rcvNxt):
			// Sent again before our ACK came: the same bytes.
			off := int(s.seq - g.irs - 1)
			if have := g.stream[off:min(len(g.stream), off+len(s.payload))]; !bytes.Equal(have, s.payload[:len(have)]) {
				g.t.Fatalf("a retransmission at %d differs from the first copy", s.seq)
			}
		case s.seq != g.rcvNxt:
			if g.f.h.link.Stats().TxErrors.Load() == 0 && g.f.h.tcpDropped.Load() == 0 {
				g.t.Fatalf("segment %v out of order: expected seq %d, and no frame was dropped", s, g.rcvNxt)
			}
		default:
			g.stream = append(g.stream, s.payload...)
			g.rcvNxt = end
			if s.flags&flagFIN != 0 {
				if g.gotFIN {
					g.t.Fatalf("a second FIN at %d", s.seq)
				}
				g.gotFIN = true
				g.rcvNxt++
			}
		}
		if ack {
			g.ack()
		}
	}
	if len(g.stream) != n {
		g.t.Fatalf("%d bytes received, want %d", len(g.stream), n)
	}
}

// readFull reads n bytes from the host's end.
func readFull(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(fastWait))
	b := make([]byte, n)
	if m, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("the host read %d of %d bytes: %v (%q)", m, n, err, b[:min(m, 64)])
	}
	return b
}

// readEnd reads from the host's end until it ends, and returns the error
// (io.EOF for a FIN) and any bytes that came first.
func readEnd(t *testing.T, c net.Conn) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(fastWait))
	b, err := io.ReadAll(c)
	if err == nil {
		err = io.EOF
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the host's end did not end within %v (read %d bytes)", fastWait, len(b))
	}
	return b, err
}

// noMore checks that nothing more comes on the host's end for a moment.
func noMore(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var b [64]byte
	if n, err := c.Read(b[:]); n > 0 || err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the host got %q, %v; want nothing more", b[:n], err)
	}
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	return b
}

// The fast path's MSS on the harness's link: its MTU less the headers.
const (
	fastMSS4 = 65520 - 40
	fastMSS6 = 65520 - 60
)

// TestTCPFastHandshake: the SYN-ACK carries our MSS, the window scale
// exactly when the container offered one, and nothing else; the windows
// that follow are scaled accordingly, and data is cut at the container's
// MSS (536 when it gives none).
func TestTCPFastHandshake(t *testing.T) {
	f := newFastFixture(t, nil)
	for i, tc := range []struct {
		name    string
		mss     uint16
		ws      int
		sack    bool
		wantWnd uint16 // the window field after the handshake
		maxSeg  int
	}{
		{"window scale and MSS", 1460, 7, true, fastPendingMax >> fastRcvShift, 1460},
		{"window scale 0", 1000, 0, false, fastPendingMax >> fastRcvShift, 1000},
		{"no window scale", 1200, -1, true, 65535, 1200},
		{"no options", 0, -1, false, 65535, 536},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := f.sub(t).guest(false, uint16(41000+i))
			g.mss, g.ws, g.sackPerm = tc.mss, tc.ws, tc.sack
			sa, host := g.connect()
			wantWS := -1
			if tc.ws >= 0 {
				wantWS = fastRcvShift
			}
			if sa.opts.MSS != fastMSS4 || sa.opts.WS != wantWS || sa.opts.SACKPermitted || sa.opts.TS {
				t.Errorf("SYN-ACK options %+v, want MSS %d, WS %d, no SACK or timestamps", sa.opts, fastMSS4, wantWS)
			}
			if sa.wnd != 65535 {
				t.Errorf("SYN-ACK window %d, want 65535 (never scaled)", sa.wnd)
			}
			if len(sa.payload) != 0 {
				t.Errorf("SYN-ACK with %d bytes of data", len(sa.payload))
			}

			// Established: data both ways.
			g.sendData([]byte("ping"))
			if got := readFull(t, host, 4); string(got) != "ping" {
				t.Fatalf("host read %q, want ping", got)
			}
			a := g.expect("ACK of ping", func(s rxSeg) bool { return s.ack == g.sndNxt })
			if a.flags != flagACK || a.seq != g.irs+1 || a.wnd != tc.wantWnd {
				t.Errorf("ACK of the data %v, want ACK seq %d window %d", a, g.irs+1, tc.wantWnd)
			}
			data := randomBytes(uint64(i), 3*tc.maxSeg+17)
			if _, err := host.Write(data); err != nil {
				t.Fatal(err)
			}
			g.recv(len(data), tc.maxSeg, false, true)
			if !bytes.Equal(g.stream, data) {
				t.Errorf("the container received other data than the host sent")
			}
		})
	}
	f.waitFlows(4)
	if n := f.p.dials.Load(); n != 4 {
		t.Errorf("%d dials for 4 connections", n)
	}
}

// TestTCPFastGuestToHost: the container's data reaches the host intact,
// in segments from a few bytes to above a page (whose payload lies past
// the read loop's header view), across the container's sequence wrap,
// and each is acknowledged.
func TestTCPFastGuestToHost(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 42000)
	g.ws = 7
	_, host := g.connect()
	var sent []byte
	for i, n := range []int{1, 60, 100, 129, 1460, 5000, 20000, 65000} {
		d := randomBytes(uint64(100+i), n)
		g.sendData(d)
		sent = append(sent, d...)
		g.expect(fmt.Sprintf("ACK of %d bytes", n), func(s rxSeg) bool { return s.ack == g.sndNxt && len(s.payload) == 0 })
	}
	if got := readFull(t, host, len(sent)); !bytes.Equal(got, sent) {
		t.Fatalf("the host got other data than the container sent")
	}
	if g.sndNxt >= g.iss {
		t.Fatalf("the test's data did not cross the sequence wrap (iss %#x, nxt %#x)", g.iss, g.sndNxt)
	}
	noMore(t, host)
}

// TestTCPFastHostToGuest: the host's data arrives in order, within the
// container's window and MSS, with valid checksums, and the flow keeps
// only what the container has not acknowledged.
func TestTCPFastHostToGuest(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 43000)
	g.mss = 1000
	_, host := g.connect()
	data := randomBytes(7, 300000)
	go func() {
		host.SetWriteDeadline(time.Now().Add(fastWait))
		host.Write(data)
	}()
	g.recv(len(data), 1000, false, true)
	if !bytes.Equal(g.stream, data) {
		t.Fatal("the container received other data than the host sent")
	}
	// Everything acknowledged: the flow holds no buffer.
	deadline := time.Now().Add(fastWait)
	for {
		flow := f.flow(g)
		flow.mu.Lock()
		size, chunks := flow.snd.buf.size, len(flow.snd.buf.chunks)
		flow.mu.Unlock()
		if size == 0 && chunks == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flow holds %d bytes in %d chunks after all was acknowledged", size, chunks)
		}
		time.Sleep(time.Millisecond)
	}
}

// flow returns the fast path's flow for g.
func (f *fastFixture) flow(g *guest) *tcpFlow {
	f.t.Helper()
	fp := &f.h.fast.tcp
	fp.mu.RLock()
	defer fp.mu.RUnlock()
	fl := fp.flows[tcpFlowKey{src: g.src, dst: g.dst}]
	if fl == nil {
		f.t.Fatalf("no flow for %v -> %v", g.src, g.dst)
	}
	return fl
}

// TestTCPDialRefused: a failed dial answers the SYN with RST|ACK
// acknowledging it, and the flow ends.
func TestTCPDialRefused(t *testing.T) {
	f := newFastFixture(t, func(p *fastPolicy) { p.dialErr = syscall.ECONNREFUSED })
	g := f.guest(false, 44000)
	g.syn()
	r := g.expect("RST", func(rxSeg) bool { return true })
	if r.flags != flagRST|flagACK || r.ack != g.iss+1 || r.seq != 0 {
		t.Fatalf("answer %v, want RST|ACK seq 0 ack %d", r, g.iss+1)
	}
	f.waitFlows(0)
	f.waitDones(1)
	g.nothing(300*time.Millisecond, "after the RST")
}

// TestTCPFastConnectRefused: a connect that the host refuses after it
// started (a closed loopback port) answers the SYN with RST|ACK, and the
// policy hears why.
func TestTCPFastConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	results := make(chan error, 4)
	f := newFastFixture(t, func(p *fastPolicy) { p.addr, p.results = closed, results })
	g := f.guest(false, 44100)
	g.syn()
	r := g.expect("RST", func(rxSeg) bool { return true })
	if r.flags != flagRST|flagACK || r.ack != g.iss+1 {
		t.Fatalf("answer %v, want RST|ACK ack %d", r, g.iss+1)
	}
	if err := <-results; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Result told %v, want ECONNREFUSED", err)
	}
	f.waitFlows(0)
	f.waitDones(1)
}

// TestTCPFastConnectTimeout: a connect that gets no answer (a loopback
// listener whose accept queue is full drops SYNs) ends at the policy's
// timeout with RST|ACK to the container, not at the kernel's two
// minutes of SYN retries.
func TestTCPFastConnectTimeout(t *testing.T) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port)).String()
	// Fill the accept queue (backlog 0 holds one) and see it full: a
	// non-blocking connect that does not finish at once.
	var fillers []net.Conn
	defer func() {
		for _, c := range fillers {
			c.Close()
		}
	}()
	for full, tries := false, 0; !full; tries++ {
		if len(fillers) == 4 || tries == 8 {
			t.Skip("the accept queue does not fill on this kernel")
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			// Full once one connection waits in it: a first dial
			// that failed only says the machine was slow.
			full = len(fillers) > 0
			continue
		}
		fillers = append(fillers, c)
	}
	results := make(chan error, 4)
	f := newFastFixture(t, func(p *fastPolicy) {
		p.addr, p.results, p.timeout = addr, results, 300*time.Millisecond
	})
	g := f.guest(false, 44200)
	start := time.Now()
	g.syn()
	r := g.expect("RST", func(rxSeg) bool { return true })
	if r.flags != flagRST|flagACK || r.ack != g.iss+1 {
		t.Fatalf("answer %v, want RST|ACK ack %d", r, g.iss+1)
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Fatalf("RST after %v, before the 300 ms timeout", took)
	}
	if err := <-results; !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("Result told %v, want ETIMEDOUT", err)
	}
	f.waitFlows(0)
	f.waitDones(1)
}

// TestTCPFastGuestReset: the container's RST resets the host socket and
// ends the flow.
func TestTCPFastGuestReset(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 45000)
	_, host := g.connect()
	g.sendData([]byte("x"))
	readFull(t, host, 1)
	// A RST outside the window is not taken: data after it still goes.
	g.send(tcpRST, g.sndNxt-100, nil)
	g.sendData([]byte("y"))
	if got := readFull(t, host, 1); string(got) != "y" {
		t.Fatalf("the host read %q, want y", got)
	}
	g.send(tcpRST, g.sndNxt, nil)
	_, err := readEnd(t, host)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the host's end ended with %v, want a reset", err)
	}
	f.waitFlows(0)
	f.waitDones(1)
}

// TestTCPFastHostReset: a reset from the host becomes a RST to the
// container at the next sequence number.
func TestTCPFastHostReset(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 46000)
	_, host := g.connect()
	host.Write([]byte("data"))
	g.recv(4, 1460, false, true)
	host.SetLinger(0)
	host.Close()
	r := g.expect("RST", func(s rxSeg) bool { return s.flags&flagRST != 0 })
	if r.seq != g.rcvNxt {
		t.Errorf("RST %v at seq %d, want %d", r, r.seq, g.rcvNxt)
	}
	f.waitFlows(0)
	f.waitDones(1)
}

// TestTCPFastGuestClosesFirst: the container's FIN half-closes the host
// socket (EOF there) while the host can still send; the host's close
// then sends FIN, and the container's ACK of it ends the flow.
func TestTCPFastGuestClosesFirst(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 47000)
	_, host := g.connect()
	g.send(tcpACK|tcpPSH|tcpFIN, g.sndNxt, []byte("request"))
	g.sndNxt += uint32(len("request")) + 1
	got, err := readEnd(t, host)
	if string(got) != "request" || err != io.EOF {
		t.Fatalf("the host read %q then %v, want request then EOF", got, err)
	}
	g.expect("ACK of the FIN", func(s rxSeg) bool { return s.ack == g.sndNxt })

	reply := randomBytes(3, 5000)
	if _, err := host.Write(reply); err != nil {
		t.Fatalf("the host cannot send after the container's FIN: %v", err)
	}
	g.recv(len(reply), 1460, false, true)
	if f.h.fast.TCPFlows() != 1 {
		t.Fatal("the flow ended before the host closed")
	}
	host.Close()
	g.recv(len(reply), 1460, true, false)
	if !bytes.Equal(g.stream, reply) {
		t.Fatal("the container received other data than the host sent")
	}
	g.ack()
	f.waitFlows(0)
	f.waitDones(1)
}

// TestTCPFastHostClosesFirst: the host's half-close sends FIN after its
// data; the container can still send, and its FIN, acknowledged, ends
// the flow and reaches the host as EOF.
func TestTCPFastHostClosesFirst(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 48000)
	_, host := g.connect()
	host.Write([]byte("bye"))
	host.CloseWrite()
	g.recv(3, 1460, true, true)
	if string(g.stream) != "bye" {
		t.Fatalf("the container received %q, want bye", g.stream)
	}
	g.sendData([]byte("still talking"))
	if got := readFull(t, host, len("still talking")); string(got) != "still talking" {
		t.Fatalf("the host read %q", got)
	}
	g.expect("ACK of the data", func(s rxSeg) bool { return s.ack == g.sndNxt })
	a := g.fin()
	if a.flags != flagACK || a.seq != g.rcvNxt {
		t.Errorf("answer to the FIN %v, want a bare ACK at %d", a, g.rcvNxt)
	}
	if _, err := readEnd(t, host); err != io.EOF {
		t.Errorf("the host's end ended with %v, want EOF", err)
	}
	f.waitFlows(0)
	f.waitDones(1)
}

// TestTCPFastDuplicateData: data the flow already took, whole or in
// part, reaches the host once and is acknowledged again.
func TestTCPFastDuplicateData(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 49000)
	_, host := g.connect()
	start := g.sndNxt
	g.sendData([]byte("abc"))
	g.expect("ACK of abc", func(s rxSeg) bool { return s.ack == start+3 })
	g.send(tcpACK|tcpPSH, start, []byte("abc")) // the same again
	a := g.expect("ACK of the duplicate", func(rxSeg) bool { return true })
	if a.ack != start+3 || len(a.payload) != 0 {
		t.Errorf("answer to a duplicate %v, want an ACK of %d", a, start+3)
	}
	g.send(tcpACK|tcpPSH, start+1, []byte("bcdef")) // overlaps
	g.sndNxt = start + 6
	g.expect("ACK of the overlap", func(s rxSeg) bool { return s.ack == start+6 })
	g.sendData([]byte("END"))
	if got := readFull(t, host, 9); string(got) != "abcdefEND" {
		t.Fatalf("the host read %q, want abcdefEND", got)
	}
	noMore(t, host)
}

// TestTCPFastOutOfOrder: a segment beyond the next expected byte gets a
// duplicate ACK and is not delivered; sent again in order, it is.
func TestTCPFastOutOfOrder(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 50000)
	_, host := g.connect()
	start := g.sndNxt
	g.send(tcpACK|tcpPSH, start+10, []byte("late"))
	a := g.expect("duplicate ACK", func(rxSeg) bool { return true })
	if a.flags != flagACK || a.ack != start || len(a.payload) != 0 {
		t.Errorf("answer to an out-of-order segment %v, want an ACK of %d", a, start)
	}
	noMore(t, host)
	g.sendData([]byte("0123456789"))
	g.expect("ACK of the gap", func(s rxSeg) bool { return s.ack == start+10 })
	if got := readFull(t, host, 10); string(got) != "0123456789" {
		t.Fatalf("the host read %q", got)
	}
	noMore(t, host) // "late" was dropped
	g.sendData([]byte("late"))
	g.expect("ACK of late", func(s rxSeg) bool { return s.ack == start+14 })
	if got := readFull(t, host, 4); string(got) != "late" {
		t.Fatalf("the host read %q", got)
	}
}

// TestTCPFastRetransmit: an unacknowledged SYN-ACK and unacknowledged
// data come again (the timer), the same bytes at the same sequence.
func TestTCPFastRetransmit(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 51000)
	g.syn()
	sa := g.expect("SYN-ACK", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	again := g.expect("SYN-ACK again", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	if again.seq != sa.seq || again.ack != sa.ack || again.flags != flagSYN|flagACK {
		t.Fatalf("SYN-ACK %v sent again as %v", sa, again)
	}
	// The container's SYN again (it lost the SYN-ACK): the same answer.
	g.syn()
	again = g.expect("SYN-ACK to the SYN again", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	if again.seq != sa.seq || again.ack != sa.ack {
		t.Fatalf("SYN-ACK %v, then %v to the same SYN", sa, again)
	}
	g.irs, g.rcvNxt, g.sndNxt = sa.seq, sa.seq+1, g.iss+1
	g.ack()
	host := f.accept()

	host.Write([]byte("retransmit me"))
	first := g.expect("data", func(s rxSeg) bool { return len(s.payload) > 0 })
	second := g.expect("data again", func(s rxSeg) bool { return len(s.payload) > 0 })
	if first.seq != g.rcvNxt || second.seq != first.seq || string(second.payload) != "retransmit me" || string(first.payload) != "retransmit me" {
		t.Fatalf("data %v %q, then %v %q; want %q twice at %d", first, first.payload, second, second.payload, "retransmit me", g.rcvNxt)
	}
	g.rcvNxt += uint32(len(first.payload))
	g.ack()
	// Acknowledged: the flow goes on from there.
	host.Write([]byte("next"))
	n := g.expect("new data", func(s rxSeg) bool { return len(s.payload) > 0 && s.seq == g.rcvNxt })
	if string(n.payload) != "next" {
		t.Fatalf("new data %q, want next", n.payload)
	}
}

// TestTCPFastZeroWindow: a closed window holds the host's data back; the
// flow probes, and the container's answer with an open window lets it
// through.
func TestTCPFastZeroWindow(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 52000)
	g.syn()
	sa := g.expect("SYN-ACK", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	g.irs, g.rcvNxt, g.sndNxt = sa.seq, sa.seq+1, g.iss+1
	g.wnd = 0
	g.ack()
	host := f.accept()
	host.Write([]byte("held back"))
	p := g.expect("window probe", func(s rxSeg) bool { return len(s.payload) == 0 })
	if p.seq != g.rcvNxt-1 || p.flags != flagACK {
		t.Errorf("window probe %v, want an ACK at %d", p, g.rcvNxt-1)
	}
	g.wnd = 65535
	g.ack()
	g.recv(len("held back"), 1460, false, true)
	if string(g.stream) != "held back" {
		t.Fatalf("the container received %q", g.stream)
	}
}

// TestTCPPolicyDeclines: a SYN the policy does not take goes to the
// stack, whose forwarder answers (with SACK, which the fast path never
// offers), and no flow starts.
func TestTCPPolicyDeclines(t *testing.T) {
	f := newFastFixture(t, func(p *fastPolicy) { p.decline = true })
	// The stack resolves the container's MAC before it answers (the
	// fast path takes it from the SYN): the container asks for the
	// gateway's first, as a real one does, which teaches the stack.
	f.h.send(t, arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4))
	select {
	case <-f.h.arpReplies:
	case <-time.After(fastWait):
		t.Fatal("no ARP reply from the gateway")
	}
	g := f.guest(false, 53000)
	g.sackPerm = true
	g.syn()
	sa := g.expect("the stack's SYN-ACK", func(s rxSeg) bool { return s.flags&flagSYN != 0 })
	if sa.flags != flagSYN|flagACK || sa.ack != g.iss+1 || !sa.opts.SACKPermitted {
		t.Errorf("SYN-ACK %v options %+v, want gVisor's (SACK permitted)", sa, sa.opts)
	}
	if f.p.asked.Load() != 1 || f.p.dials.Load() != 0 || f.h.fast.TCPFlows() != 0 {
		t.Errorf("policy asked %d times, %d dials, %d flows; want 1, 0, 0", f.p.asked.Load(), f.p.dials.Load(), f.h.fast.TCPFlows())
	}
	// Segments of a connection the stack holds are not the fast path's.
	g.irs, g.rcvNxt, g.sndNxt = sa.seq, sa.seq+1, g.iss+1
	g.ack()
	g.sendData([]byte("echo"))
	e := g.expect("the stack's echo", func(s rxSeg) bool { return len(s.payload) > 0 })
	if string(e.payload) != "echo" {
		t.Errorf("the stack echoed %q", e.payload)
	}
	g.send(tcpRST, g.sndNxt, nil)
	if f.p.asked.Load() != 1 {
		t.Errorf("the policy was asked %d times for one SYN", f.p.asked.Load())
	}
}

// TestTCPFastIPv6: the same over IPv6.
func TestTCPFastIPv6(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(true, 54000)
	g.ws = 5
	sa, host := g.connect()
	if sa.opts.MSS != fastMSS6 || sa.opts.WS != fastRcvShift {
		t.Errorf("SYN-ACK options %+v, want MSS %d WS %d", sa.opts, fastMSS6, fastRcvShift)
	}
	g.exchange(host, "host", randomBytes(61, 3000), randomBytes(62, 10000))
	f.waitFlows(0)
}

// TestTCPFastLinkCloseEndsFlows: closing the link closes every flow's
// host socket; the fixture's cleanup checks done ran for each.
func TestTCPFastLinkCloseEndsFlows(t *testing.T) {
	f := newFastFixture(t, nil)
	var hosts []*net.TCPConn
	for i := range 3 {
		g := f.guest(i == 2, uint16(55000+i))
		_, host := g.connect()
		hosts = append(hosts, host)
	}
	// One flow still dialing: the listener's backlog takes the dial,
	// but this one's SYN-ACK is never acknowledged.
	f.guest(false, 55010).syn()
	f.waitFlows(4)
	f.closeHarness()
	for i, host := range hosts {
		if b, _ := readEnd(t, host); len(b) != 0 {
			t.Errorf("host end %d read %d bytes", i, len(b))
		}
	}
	if n := f.h.fast.TCPFlows(); n != 0 {
		t.Errorf("%d flows after the link closed", n)
	}
}

// answers matches the flow's answer to data at seq, not a window update
// the flusher sent meanwhile: an answer that takes nothing comes only at
// a closed window.
func answers(seq uint32) func(rxSeg) bool {
	return func(s rxSeg) bool {
		return len(s.payload) == 0 && s.flags == flagACK && (s.ack != seq || s.wnd == 0)
	}
}

// TestTCPFastHostSlow: a host that does not read fills its socket, then
// the flow's pending queue; the window offered shrinks to zero and what
// does not fit is not acknowledged. Once the host reads, the flow says
// the window reopened, and everything arrives once, in order.
func TestTCPFastHostSlow(t *testing.T) {
	f := newFastFixture(t, func(p *fastPolicy) { p.sndBuf = 64 << 10 })
	g := f.guest(false, 57000)
	g.ws, g.mss = 7, 65000
	_, host := g.connect()
	host.SetReadBuffer(64 << 10)

	const seg = 60000
	data := randomBytes(57, 6<<20)
	start := g.sndNxt
	// sendUntil sends data in segments, each answered by an ACK of what
	// the flow took, until the window closes if closed, else until all is
	// sent.
	sendUntil := func(closed bool) {
		t.Helper()
		for {
			off := int(g.sndNxt - start)
			if off == len(data) {
				if closed {
					t.Fatalf("all %d bytes taken and the window never closed", off)
				}
				return
			}
			at := g.sndNxt
			g.sendData(data[off:min(len(data), off+seg)])
			sent := g.sndNxt
			a := g.expect("ACK of the data", answers(at))
			if seqGT(a.ack, sent) || seqLT(a.ack, sent-seg) {
				t.Fatalf("ACK of %d after data up to %d", a.ack, sent)
			}
			g.sndNxt = a.ack // what was not taken comes again
			if a.wnd == 0 {
				if a.ack == sent && int(a.ack-start) < fastPendingMax {
					t.Fatalf("window closed after only %d bytes", a.ack-start)
				}
				if closed {
					t.Logf("the window closed after %d bytes", a.ack-start)
					return
				}
				// The host reads slower than this sends: wait.
				g.expect("window update", func(s rxSeg) bool { return s.wnd > 0 && s.ack == g.sndNxt })
				continue
			}
			if a.ack != sent && a.wnd != 0 {
				t.Fatalf("%d bytes not taken with a window of %d left", sent-a.ack, a.wnd)
			}
		}
	}
	// Fill until the window stays shut: the host socket may still take
	// what the kernel moves on to the (unread) receiver just after the
	// window closed, and the flow then tells of the room.
	for quiet := false; !quiet; {
		sendUntil(true)
		_, reopened := g.next(time.Now().Add(200 * time.Millisecond))
		quiet = !reopened
	}
	// The window is shut: nothing more is taken.
	g.sendData([]byte("refused"))
	a := g.expect("ACK at a closed window", answers(g.sndNxt-7))
	if a.ack != g.sndNxt-uint32(len("refused")) || a.wnd != 0 {
		t.Fatalf("answer %v to data at a closed window, want an ACK of %d with window 0", a, g.sndNxt-7)
	}
	g.sndNxt = a.ack

	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(data))
		host.SetReadDeadline(time.Now().Add(2 * fastWait))
		n, _ := io.ReadFull(host, b)
		got <- b[:n]
	}()
	// The flow tells of the room without being asked.
	g.expect("window update", func(s rxSeg) bool { return s.wnd > 0 && s.ack == g.sndNxt })
	sendUntil(false)
	b := <-got
	if !bytes.Equal(b, data) {
		t.Fatalf("the host read %d bytes, other than the %d sent", len(b), len(data))
	}
}

// TestTCPFastResetWhileHostSends: flows reset by the container while the
// host streams end at once, both ways, and the read loop lives on (the
// reader's RawConn.Read and a close under the flow's lock once stalled
// the TAP).
func TestTCPFastResetWhileHostSends(t *testing.T) {
	f := newFastFixture(t, nil)
	for i := range 10 {
		g := f.guest(false, uint16(58000+i))
		g.ws, g.mss = 7, 16000
		_, host := g.connect()
		writerDone := make(chan error, 1)
		go func() {
			buf := make([]byte, 32<<10)
			host.SetWriteDeadline(time.Now().Add(fastWait))
			for {
				if _, err := host.Write(buf); err != nil {
					writerDone <- err
					return
				}
			}
		}()
		// Take a few segments, acknowledging some, then reset.
		deadline := time.Now().Add(fastWait)
		for n := 0; n < 2+i%4; {
			s, ok := g.next(deadline)
			if !ok {
				t.Fatalf("flow %d: no data from the host", i)
			}
			if len(s.payload) > 0 && s.seq == g.rcvNxt {
				n++
				g.rcvNxt += uint32(len(s.payload))
				if i%2 == 0 {
					g.ack()
				}
			}
		}
		g.send(tcpRST, g.sndNxt, nil)
		select {
		case err := <-writerDone:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("flow %d: the host kept writing for %v after the reset", i, fastWait)
			}
		case <-time.After(2 * fastWait):
			t.Fatalf("flow %d: the host's writer is stuck", i)
		}
	}
	f.waitFlows(0)
	f.waitDones(10)
	f.h.checkAlive(t)
}

// TestTCPFastPortReuse: a new SYN (another ISN) on the 4-tuple of a flow
// still held gets a challenge ACK; the container's RST in answer ends
// the old flow, and its next SYN starts a new one.
func TestTCPFastPortReuse(t *testing.T) {
	f := newFastFixture(t, nil)
	g := f.guest(false, 59000)
	_, host := g.connect()
	g.sendData([]byte("old"))
	readFull(t, host, 3)
	g.expect("ACK of old", func(s rxSeg) bool { return s.ack == g.sndNxt })

	fresh := f.guest(false, 59000)
	fresh.iss = g.iss + 1<<30
	fresh.syn()
	c := fresh.expect("challenge ACK", func(rxSeg) bool { return true })
	if c.flags != flagACK || c.seq != g.rcvNxt || c.ack != g.sndNxt {
		t.Fatalf("answer to a new SYN on a held 4-tuple %v, want an ACK seq %d ack %d", c, g.rcvNxt, g.sndNxt)
	}
	// As Linux in SYN-SENT answers an unacceptable ACK: RST at its ack.
	f.h.send(t, fresh.frame(tcpRST, c.ack, 0, nil, nil))
	if _, err := readEnd(t, host); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the old host socket ended with %v, want a reset", err)
	}
	f.waitFlows(0)
	sa, _ := fresh.connect()
	if sa.ack != fresh.iss+1 {
		t.Fatalf("SYN-ACK %v to the new SYN", sa)
	}
	if n := f.p.dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
}
