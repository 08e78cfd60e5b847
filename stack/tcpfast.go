package stack

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The TCP fast path carries the container's outbound TCP connections
// without a netstack endpoint, as pasta does: the link's event loop
// (poller_linux.go) translates the container's segments into calls on a
// host socket, and what the host socket reads into segments. A 64-byte
// round trip through gVisor cost the process about 60 µs of CPU against
// slirp4netns' 18 (docs/benchmarks.md); most of that was the netstack and
// its goroutine hand-offs. See docs/tcp-fastpath.md for the design.
//
// What it keeps of TCP, toward the container: the handshake (MSS and
// window scale; no SACK or timestamps, which the container then leaves
// off), in-order delivery (a TAP does not reorder; anything out of order
// follows a drop and gets a duplicate ACK), retransmission from the data
// kept until acknowledged (timer with backoff, three duplicate ACKs),
// window probes, FIN and RST both ways. The host side is a kernel socket.

// TCPFastPolicy decides which connections the fast path carries.
type TCPFastPolicy interface {
	// TakeTCP is asked, on the read loop (it must not block), about a
	// SYN from the container's src to dst. With ok the fast path
	// carries the connection, its host socket connected as d says (a
	// failure answers RST). Without ok the SYN goes to the stack.
	TakeTCP(src, dst netip.AddrPort) (d TCPFastDial, ok bool)
}

// TCPFastDial says how a flow's host socket is made. The read loop makes
// it: a non-blocking connect that the poller sees finish, as a goroutine
// per dial had the SYN-ACK wait for another thread to wake and steal it.
type TCPFastDial struct {
	// To is where the socket connects.
	To netip.AddrPort
	// Control, when set, runs on the socket before it connects, as a
	// net.Dialer's does (outbound address binding). It must not block.
	Control func(network, address string, c syscall.RawConn) error
	// Timeout bounds the connect; 0 leaves it to the kernel.
	Timeout time.Duration
	// Result, when set, is told once how the connect ended (nil:
	// connected). It runs on the read loop.
	Result func(error)
	// Done, when set, runs once when the flow has ended.
	Done func()
}

const (
	// fastRcvShift is the window scale offered to the container.
	fastRcvShift = 7
	// fastPendingMax bounds the container's data that a full host
	// socket has not taken yet; the window offered is what is left.
	fastPendingMax = 1 << 20
	// fastSendMax bounds the host's data kept until the container
	// acknowledges it.
	fastSendMax = 2 << 20
	// fastSegMax is the largest payload of a super-frame: a 64 KiB IP
	// packet less IPv6's header and a TCP header.
	fastSegMax = 65535 - header.IPv6MinimumSize - header.TCPMinimumSize
	fastRTOMin = 200 * time.Millisecond
	fastRTOMax = 30 * time.Second
	// fastRetries gives up on a container that acknowledges nothing
	// for about 3 minutes of backoff.
	fastRetries = 12
	// fastAckDelay bounds how long an ACK of the container's data waits
	// for a segment of ours to carry it (libslirp's fast timer: 2 ms;
	// Linux's delayed ACK: 40 ms); fastAckEvery is the data after which
	// it goes at once. A pure ACK costs the container's stack, inside
	// our TAP write, about as much as a data segment: with one per two
	// 64 KiB segments, ns->host moved 9% more per CPU second.
	fastAckDelay = 500 * time.Microsecond
	fastAckEvery = 128 << 10
)

type tcpFlowKey struct{ src, dst netip.AddrPort }

// tcpFastPath is the TapEndpoint's table of fast-path flows.
type tcpFastPath struct {
	policy TCPFastPolicy // nil: off
	seed   maphash.Seed  // keys the hash of initial sequence numbers

	// last is the flow of the last segment, which the next one most
	// likely has too: a key compare instead of hashing two AddrPorts.
	// The read loop's only.
	last *tcpFlow

	mu     sync.RWMutex
	flows  map[tcpFlowKey]*tcpFlow
	closed bool
}

// EnableTCPFastPath carries the outbound connections p takes past the
// stack. Call it before the NIC is created. A pcap sniffer on the link
// would not see these connections.
func (e *TapEndpoint) EnableTCPFastPath(p TCPFastPolicy) {
	fp := &e.tcpf
	fp.policy = p
	fp.flows = map[tcpFlowKey]*tcpFlow{}
	fp.seed = maphash.MakeSeed()
}

// TCPFastFlows counts the connections on the fast path.
func (e *TapEndpoint) TCPFastFlows() int {
	fp := &e.tcpf
	fp.mu.RLock()
	defer fp.mu.RUnlock()
	return len(fp.flows)
}

// closeTCPFast ends every flow: their host sockets close. The loop has
// stopped by then; flows have no goroutines of their own.
func (e *TapEndpoint) closeTCPFast() {
	fp := &e.tcpf
	if fp.policy == nil {
		return
	}
	fp.mu.Lock()
	fp.closed = true
	fp.mu.Unlock()
	for _, f := range fp.snapshot() {
		f.mu.Lock()
		// A flow whose container side has finished and handed all
		// to the host socket closes gracefully: the kernel still
		// delivers what the socket holds. The others are reset.
		f.closeLocked(false, !f.sentAllLocked())
		f.mu.Unlock()
	}
}

// sentAllLocked says whether the container has closed its side and all
// it sent is in the host socket.
func (f *tcpFlow) sentAllLocked() bool {
	return f.guestFIN && f.shutWr && !f.flushing && len(f.pending) == 0
}

// DrainTCPFast waits, at most timeout, until every fast-path flow has
// been closed by the container and has handed all its data to the host
// socket: what `run` does when its command exits, so that the last
// bytes a command sent before exiting (its sockets live on in the
// namespace) are not cut. It reports whether everything drained.
func (e *TapEndpoint) DrainTCPFast(timeout time.Duration) bool {
	fp := &e.tcpf
	if fp.policy == nil {
		return true
	}
	deadline := time.Now().Add(timeout)
	for {
		drained := true
		for _, f := range fp.snapshot() {
			f.mu.Lock()
			done := f.closed || f.sentAllLocked()
			f.mu.Unlock()
			if !done {
				drained = false
				break
			}
		}
		if drained {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// isn picks an initial sequence number as RFC 6528 does: a clock that
// ticks every 4 µs plus a keyed hash of the 4-tuple. A new connection on
// a 4-tuple then starts above where the last one ended, which is what
// a container's socket in TIME-WAIT wants of a SYN to accept it.
func (fp *tcpFastPath) isn(key tcpFlowKey) uint32 {
	return uint32(time.Now().UnixNano()/4000) + uint32(maphash.Comparable(fp.seed, key))
}

// snapshot lists the flows, so that each can be locked without fp.mu
// (the lock order is a flow's mu, then fp.mu).
func (fp *tcpFastPath) snapshot() []*tcpFlow {
	fp.mu.RLock()
	defer fp.mu.RUnlock()
	flows := make([]*tcpFlow, 0, len(fp.flows))
	for _, f := range fp.flows {
		flows = append(flows, f)
	}
	return flows
}

func (fp *tcpFastPath) remove(f *tcpFlow) {
	fp.mu.Lock()
	if fp.flows[f.key] == f {
		delete(fp.flows, f.key)
	}
	fp.mu.Unlock()
}

// deliverTCP hands a frame read from the TAP (hdr, then rest) to its
// fast-path flow, or starts one for a SYN the policy takes, and reports
// whether it did. It runs on the read loop before the frame becomes a
// gVisor buffer.
func (e *TapEndpoint) deliverTCP(hdr, rest []byte) bool {
	fp := &e.tcpf
	if len(hdr) < header.EthernetMinimumSize {
		return false
	}
	eth := header.Ethernet(hdr)
	if string(hdr[:header.EthernetAddressSize]) != string(e.mac) { // no string made per frame
		return false
	}
	seg, ok := parseTCP(hdr, len(hdr)+len(rest))
	if !ok {
		return false
	}
	key := tcpFlowKey{src: seg.src, dst: seg.dst}
	if f := fp.last; f != nil && f.key == key {
		f.mu.Lock()
		if !f.closed {
			f.applyLocked(&seg, hdr, rest)
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
	}
	fp.mu.RLock()
	f := fp.flows[key]
	fp.mu.RUnlock()
	if f == nil {
		if seg.flags&(flagSYN|flagACK|flagRST|flagFIN) != flagSYN {
			return false // the stack answers strays with RST
		}
		return e.startTCPFlow(&seg, eth.SourceAddress())
	}
	fp.last = f
	f.mu.Lock()
	f.applyLocked(&seg, hdr, rest)
	f.mu.Unlock()
	return true
}

// applyLocked applies a segment read as hdr then rest.
func (f *tcpFlow) applyLocked(seg *tcpSeg, hdr, rest []byte) {
	f.pieces = framePieces(f.pieces[:0], hdr, rest, seg.off, seg.n)
	f.segmentLocked(seg)
	clear(f.pieces)
}

func (e *TapEndpoint) startTCPFlow(seg *tcpSeg, guestMAC tcpip.LinkAddress) bool {
	fp := &e.tcpf
	if !header.IsValidUnicastEthernetAddress(guestMAC) {
		return false
	}
	d, ok := fp.policy.TakeTCP(seg.src, seg.dst)
	if !ok {
		return false
	}
	iss := e.tcpf.isn(tcpFlowKey{src: seg.src, dst: seg.dst})
	mtu := int(e.MTU())
	hdrs := header.IPv4MinimumSize + header.TCPMinimumSize
	if seg.src.Addr().Is6() {
		hdrs = header.IPv6MinimumSize + header.TCPMinimumSize
	}
	mss := int(seg.mss)
	if mss == 0 {
		mss = 536 // RFC 9293's default
	}
	f := &tcpFlow{
		e:        e,
		key:      tcpFlowKey{src: seg.src, dst: seg.dst},
		guestMAC: guestMAC,
		irs:      seg.seq,
		rcvNxt:   seg.seq + 1,
		iss:      iss,
		sndUna:   iss,
		sndNxt:   iss,
		sndWnd:   uint32(seg.wnd),
		mss:      max(min(mss, mtu-hdrs), 64),
		ourMSS:   uint16(min(mtu-hdrs, 65535)),
		rto:      fastRTOMin,
		fd:       -1,
	}
	if seg.wscale >= 0 {
		f.wsOK = true
		f.sndShift = uint8(seg.wscale)
	}
	fp.mu.Lock()
	if fp.closed || fp.flows[f.key] != nil {
		fp.mu.Unlock()
		if d.Done != nil {
			d.Done()
		}
		return true
	}
	fp.flows[f.key] = f
	fp.mu.Unlock()
	e.learnGuestMAC(guestMAC)
	e.stats.TCPFastFlows.Add(1)
	f.done = d.Done
	f.result = d.Result
	f.mu.Lock()
	f.connectLocked(&d)
	f.mu.Unlock()
	return true
}

type flowState uint8

const (
	fsConnecting  flowState = iota // dialing the host
	fsSynAckSent                   // waiting for the container's ACK
	fsSynSent                      // a published port's SYN, waiting for the container's SYN-ACK
	fsEstablished                  // data both ways
)

// tcpFlow is one connection on the fast path. mu guards everything; the
// poller's goroutine holds it to apply a segment and to move host data,
// timers and a published flow's dial to do their part. Sequence
// variables are named as in RFC 9293: snd* for what goes to the
// container, rcv* for what comes from it.
type tcpFlow struct {
	e        *TapEndpoint
	key      tcpFlowKey // src: the container's end; dst: the peer it sees
	guestMAC tcpip.LinkAddress
	done     func()      // the policy's, once at the end; may be nil
	result   func(error) // told how the connect ended; may be nil
	// ended is closed at the end of a published flow (carry waits).
	ended chan struct{}

	mu     sync.Mutex
	state  flowState
	closed bool

	irs, rcvNxt         uint32
	iss, sndUna, sndNxt uint32
	sndWnd              uint32 // the container's window from sndUna, in bytes
	sndShift            uint8
	wsOK                bool // window scaling on: both sides offered it
	mss                 int  // largest segment the container takes
	ourMSS              uint16
	lastWnd             uint16 // the window field last sent
	guestFIN, shutWr    bool   // FIN from the container; host socket shut for writing
	hostEOF, finSent    bool   // EOF from the host socket; FIN sent to the container
	dupAcks             int
	rto                 time.Duration
	retries             int
	// The retransmission timer is lazy: timerOn says it is wanted, for
	// rtoAt; the runtime timer (timerRunning) is not reset per segment
	// but re-armed when it fires early, as a reset can wake an idle
	// thread out of Go's poller.
	timer        *time.Timer
	timerOn      bool
	timerRunning bool
	rtoAt        time.Time // when the timer is wanted
	timerAt      time.Time // when the runtime timer fires
	// ackOwed counts the bytes taken since the last ACK sent; the
	// poller sends the ACK that no segment of ours carried in time
	// (ackTimerOn, for the request numbered ackGen).
	ackOwed    int
	ackTimerOn bool
	ackGen     uint32

	// snd holds the host's data from sndUna on: sent, then unsent.
	snd sendBuf
	// pending is the container's data the host socket has not taken;
	// flushing says it waits for the socket to be writable (or to be
	// there at all: a published flow's until its handshake is done).
	pending  []byte
	pendBuf  *[]byte // pending's pooled array, while data waits
	flushing bool

	// fd is the host socket, out of Go's poller (-1: none yet, or
	// closed). hostReady: it may have data to read (an edge came and
	// no read found it empty since); hostRDHUP: its peer sent FIN.
	fd        int
	hostReady bool
	hostRDHUP bool
	// answered carries the end of a published flow's handshake.
	answered chan error

	// Scratch under mu.
	pieces [][]byte
	iovs   [][]byte
	wiovs  [][]byte
	hdr    [tcpHeadersMax]byte
}

// readRoomLocked is how much more host data the flow may hold: no more
// than the container's window, which keeps the host peer's pace.
func (f *tcpFlow) readRoomLocked() int {
	return min(fastSendMax, int(f.sndWnd)) - f.snd.size
}

// onPoll takes the host socket's events on the poller.
func (f *tcpFlow) OnPoll(events uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.fd < 0 {
		return
	}
	if f.state == fsConnecting {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		f.connectedLocked()
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		f.hostReady = true
	}
	if events&unix.EPOLLRDHUP != 0 {
		f.hostRDHUP = true
	}
	if f.flushing && events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		f.flushLocked()
	}
	f.pumpHostLocked()
}

// pumpHostLocked reads the host socket into snd while it has data and
// the container's window room, and sends what the window allows.
func (f *tcpFlow) pumpHostLocked() {
	for f.hostReady && !f.closed && f.fd >= 0 && f.state == fsEstablished && !f.hostEOF {
		room := f.readRoomLocked()
		if room <= 0 {
			return // an ACK that opens the window calls again
		}
		buf := f.snd.tail(room)
		n, err := eventloop.Read(f.fd, buf)
		for err == unix.EINTR {
			n, err = eventloop.Read(f.fd, buf)
		}
		if n > 0 && err == nil {
			f.snd.commit(n)
		} else {
			f.snd.unreserve() // an idle flow holds no chunk
		}
		switch {
		case err == unix.EAGAIN:
			f.hostReady = false
			return
		case err != nil:
			f.closeLocked(true, true) // the host reset: so does the container
			return
		case n == 0:
			f.hostEOF = true
			f.sendNewLocked()
			f.maybeFinishLocked()
			return
		}
		if n < len(buf) && !f.hostRDHUP {
			// A short read emptied the socket: what comes next, data
			// or FIN, brings a new edge. (Without EPOLLRDHUP a FIN
			// that came with the data shows only as the next read's
			// EOF, so that read is made.)
			f.hostReady = false
		}
		f.sendNewLocked()
	}
}

// segmentLocked applies a segment from the container; f.pieces holds its
// payload.
func (f *tcpFlow) segmentLocked(s *tcpSeg) {
	if f.closed {
		return
	}
	if f.state == fsSynSent {
		f.synSentLocked(s)
		return
	}
	if s.flags&flagRST != 0 {
		// Accept a reset within the window (RFC 5961 would ask for an
		// exact match; a TAP carries no blind attackers).
		if f.state == fsConnecting || seqLEQ(f.rcvNxt, s.seq) && seqLEQ(s.seq, f.rcvNxt+fastPendingMax) {
			f.closeLocked(false, true)
		}
		return
	}
	if s.flags&flagSYN != 0 {
		switch {
		case s.seq == f.irs:
			if f.state == fsSynAckSent {
				f.sendSynAckLocked() // ours was lost
			}
		case f.state != fsConnecting:
			// A new connection on this 4-tuple while we hold the old
			// one: a challenge ACK (RFC 5961) makes the container
			// reset the old one, and its next SYN starts afresh.
			f.sendAckLocked()
		}
		return
	}
	if f.state == fsConnecting || s.flags&flagACK == 0 {
		return
	}
	f.ackLocked(s)
	if f.closed || f.state != fsEstablished {
		return
	}
	if s.n == 0 && s.flags&flagFIN == 0 {
		f.maybeFinishLocked()
		return
	}
	f.dataLocked(s)
	f.maybeFinishLocked()
}

// ackLocked takes the acknowledgment and window of a segment.
func (f *tcpFlow) ackLocked(s *tcpSeg) {
	ack := s.ack
	if seqLT(ack, f.sndUna) || seqGT(ack, f.sndNxt) {
		return // old, or acknowledges what was never sent
	}
	wnd := uint32(s.wnd) << f.sndShift
	if f.sndNxt == f.sndUna {
		f.retries = 0 // it answers window probes: alive
	}
	if ack == f.sndUna {
		if s.n == 0 && s.flags&flagFIN == 0 && wnd == f.sndWnd && f.sndNxt != f.sndUna {
			f.dupAcks++
			if f.dupAcks == 3 {
				f.retransmitLocked()
			}
		}
		if wnd != f.sndWnd {
			grew := wnd > f.sndWnd
			f.sndWnd = wnd
			if grew {
				f.sendNewLocked()
				f.pumpHostLocked()
			}
		}
		return
	}
	acked := int(ack - f.sndUna)
	if f.state == fsSynAckSent {
		f.state = fsEstablished
		acked-- // our SYN
	}
	if f.finSent && ack == f.sndNxt {
		acked-- // our FIN
	}
	f.snd.consume(acked)
	f.sndUna = ack
	f.sndWnd = wnd
	f.dupAcks = 0
	f.retries = 0
	f.rto = fastRTOMin
	f.restartTimerLocked()
	f.sendNewLocked()
	f.pumpHostLocked()
}

// dataLocked takes the payload and FIN of an acceptable segment and
// acknowledges them.
func (f *tcpFlow) dataLocked(s *tcpSeg) {
	seq, n := s.seq, s.n
	fin := s.flags&flagFIN != 0
	if seqLT(seq, f.rcvNxt) {
		// A retransmission of what we have: keep only what is new.
		skip := int(f.rcvNxt - seq)
		if skip > n || skip == n && (!fin || f.guestFIN) {
			f.sendAckLocked()
			return
		}
		f.pieces = skipPieces(f.pieces, skip)
		seq, n = f.rcvNxt, n-skip
	}
	if seq != f.rcvNxt || f.guestFIN {
		f.sendAckLocked() // out of order: a duplicate ACK
		return
	}
	if n > 0 {
		took, err := f.toHostLocked(n)
		if err != nil {
			f.closeLocked(true, false)
			return
		}
		f.rcvNxt += uint32(took)
		if took < n {
			f.sendAckLocked() // the rest comes again
			return
		}
	}
	if fin {
		f.rcvNxt++
		f.guestFIN = true
		if !f.flushing {
			f.shutWriteLocked()
		}
	}
	f.ackOwed += n
	if fin || f.flushing || f.ackOwed >= fastAckEvery {
		f.sendAckLocked()
		return
	}
	// Delayed: the host's answer, or the next segments, carry it.
	if !f.ackTimerOn {
		f.ackTimerOn = true
		f.ackGen++
		f.e.poll.Later(f, f.ackGen, time.Now().Add(fastAckDelay))
	}
}

// Due sends a delayed ACK that no segment carried (request gen): the
// loop's eventloop.Waiter.
func (f *tcpFlow) Due(gen uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || !f.ackTimerOn || gen != f.ackGen {
		return
	}
	f.ackTimerOn = false
	if f.ackOwed > 0 {
		f.sendAckLocked()
	}
}

// Wanted says whether request gen of a delayed ACK still stands.
func (f *tcpFlow) Wanted(gen uint32) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.closed && f.ackTimerOn && gen == f.ackGen
}

// skipPieces drops the first n bytes of pieces.
func skipPieces(pieces [][]byte, n int) [][]byte {
	for len(pieces) > 0 && n >= len(pieces[0]) {
		n -= len(pieces[0])
		pieces = pieces[1:]
	}
	if len(pieces) > 0 {
		pieces[0] = pieces[0][n:]
	}
	return pieces
}

// toHostLocked writes the n bytes of f.pieces to the host socket, and
// keeps what the socket does not take for flushLocked while there is
// room. It returns how many bytes it took.
func (f *tcpFlow) toHostLocked(n int) (int, error) {
	w := 0
	if !f.flushing {
		var err error
		w, err = eventloop.Writev(f.fd, f.pieces)
		for err == unix.EINTR {
			w, err = eventloop.Writev(f.fd, f.pieces)
		}
		switch {
		case err == unix.EAGAIN:
			w = 0
		case err != nil:
			return 0, err
		}
		if w == n {
			return n, nil
		}
		f.pieces = skipPieces(f.pieces, w)
	}
	room := fastPendingMax - len(f.pending)
	want := 0
	for _, p := range f.pieces {
		want += len(p)
	}
	f.reservePendingLocked(min(want, room))
	took := 0
	for _, p := range f.pieces {
		p = p[:min(len(p), room-took)]
		f.pending = append(f.pending, p...)
		took += len(p)
	}
	if took > 0 {
		f.flushing = true // the socket's EPOLLOUT edge flushes
	}
	return w + took, nil
}

// pendingBufs hold the data full host sockets have not taken. A buffer
// per episode, made anew, cost ns->host at MTU 65520 a GC every 6 ms and
// a fifth of its throughput once the GC had a P of its own.
var pendingBufs = sync.Pool{New: func() any { b := make([]byte, 0, fastPendingMax); return &b }}

// reservePendingLocked makes room for n more pending bytes (n fits in
// fastPendingMax with what is pending) without allocating: the pooled
// buffer, its data moved to its start when the tail is short.
func (f *tcpFlow) reservePendingLocked(n int) {
	if f.pendBuf == nil {
		f.pendBuf = pendingBufs.Get().(*[]byte)
		f.pending = (*f.pendBuf)[:0]
	}
	if cap(f.pending)-len(f.pending) < n {
		k := copy((*f.pendBuf)[:cap(*f.pendBuf)], f.pending)
		f.pending = (*f.pendBuf)[:k]
	}
}

// releasePendingLocked drops what is pending and returns the buffer.
func (f *tcpFlow) releasePendingLocked() {
	f.pending = nil
	if f.pendBuf != nil {
		pendingBufs.Put(f.pendBuf)
		f.pendBuf = nil
	}
}

// flushLocked writes the pending data to the host socket until it is all
// written or the socket is full (its next EPOLLOUT edge calls again), and
// then shuts the socket's write side if the container has sent FIN.
func (f *tcpFlow) flushLocked() {
	if f.fd < 0 {
		return
	}
	wrote := false
	defer func() {
		if wrote && !f.closed && f.lastWnd < f.windowField()/2 {
			f.sendAckLocked() // the window reopened
		}
	}()
	for len(f.pending) > 0 {
		n, err := eventloop.Write(f.fd, f.pending)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			f.closeLocked(true, false)
			return
		}
		wrote = true
		f.pending = f.pending[n:]
	}
	f.releasePendingLocked()
	f.flushing = false
	if f.guestFIN {
		f.shutWriteLocked()
		f.maybeFinishLocked()
	}
}

func (f *tcpFlow) shutWriteLocked() {
	if !f.shutWr {
		f.shutWr = true
		unix.Shutdown(f.fd, unix.SHUT_WR)
	}
}

// maybeFinishLocked ends a flow closed both ways and acknowledged.
func (f *tcpFlow) maybeFinishLocked() {
	if f.shutWr && f.finSent && f.sndUna == f.sndNxt {
		f.closeLocked(false, false)
	}
}

// closeLocked ends the flow: a reset to the container and an abortive
// close of the host socket on request.
func (f *tcpFlow) closeLocked(rstGuest, rstHost bool) {
	if f.closed {
		return
	}
	f.closed = true
	if f.answered != nil {
		f.answer(errFastClosed) // a dial still waiting ends now
	}
	if rstGuest && f.state != fsConnecting {
		f.sendLocked(flagRST|flagACK, f.sndNxt, nil, 0)
	}
	if f.state == fsConnecting && f.result != nil {
		f.result(errFastClosed)
	}
	if f.fd >= 0 {
		f.e.poll.Forget(f.fd) // the flow's fd is the socket's only one
		if rstHost {
			unix.SetsockoptLinger(f.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		}
		unix.Close(f.fd)
		f.fd = -1
	}
	if f.timer != nil {
		f.timer.Stop()
	}
	f.ackTimerOn = false
	f.snd.release()
	f.releasePendingLocked()
	f.e.tcpf.remove(f)
	if f.ended != nil {
		close(f.ended)
		f.e.poll.HandOff()
	}
	if f.done != nil {
		f.done()
	}
}

// dataInFlight is what was sent from snd and not acknowledged.
func (f *tcpFlow) dataInFlight() int {
	n := int(f.sndNxt - f.sndUna)
	if f.finSent && n > 0 {
		n-- // the FIN comes last
	}
	return n
}

// sendNewLocked sends unsent host data that the window takes, then the
// FIN after the host's EOF.
func (f *tcpFlow) sendNewLocked() {
	if f.state != fsEstablished || f.closed {
		return
	}
	segMax := f.mss
	if f.e.vnet {
		segMax = fastSegMax
	}
	for {
		sent := f.dataInFlight()
		unsent := f.snd.size - sent
		room := int(f.sndWnd) - sent
		if unsent <= 0 || room <= 0 {
			break
		}
		n := min(unsent, room, segMax)
		f.iovs = f.snd.slices(f.iovs[:0], sent, n)
		f.sendLocked(flagACK|flagPSH, f.sndNxt, f.iovs, n)
		clear(f.iovs)
		f.sndNxt += uint32(n)
	}
	if f.hostEOF && !f.finSent && f.snd.size == f.dataInFlight() {
		f.sendLocked(flagFIN|flagACK, f.sndNxt, nil, 0)
		f.sndNxt++
		f.finSent = true
	}
	f.armLocked()
}

// retransmitLocked sends again the first unacknowledged segment.
func (f *tcpFlow) retransmitLocked() {
	switch {
	case f.state == fsSynAckSent:
		f.sendSynAckLocked()
	case f.state == fsSynSent:
		f.sendLocked(flagSYN, f.iss, nil, 0)
	case f.dataInFlight() > 0:
		segMax := f.mss
		if f.e.vnet {
			segMax = fastSegMax
		}
		n := min(f.dataInFlight(), segMax)
		f.iovs = f.snd.slices(f.iovs[:0], 0, n)
		f.sendLocked(flagACK|flagPSH, f.sndUna, f.iovs, n)
		clear(f.iovs)
	case f.finSent && f.sndNxt != f.sndUna:
		f.sendLocked(flagFIN|flagACK, f.sndNxt-1, nil, 0)
	}
}

// armLocked starts the timer if something waits on the container: an
// acknowledgment, or a window that closed with data to send.
func (f *tcpFlow) armLocked() {
	if !f.timerWantedLocked() {
		f.timerOn = false // lazy: onTimer finds it off
		return
	}
	if f.timerOn {
		return
	}
	f.restartTimerLocked()
}

func (f *tcpFlow) timerWantedLocked() bool {
	if f.state == fsConnecting {
		return !f.rtoAt.IsZero() // the connect's deadline
	}
	return f.sndNxt != f.sndUna || f.state == fsEstablished && f.sndWnd == 0
}

// restartTimerLocked (re)starts the timer from now if it is needed.
func (f *tcpFlow) restartTimerLocked() {
	if !f.timerWantedLocked() {
		f.timerOn = false
		return
	}
	f.timerOn = true
	if f.state != fsConnecting {
		f.rtoAt = time.Now().Add(f.rto)
	}
	if f.timerRunning && !f.rtoAt.Before(f.timerAt) {
		return // it fires early and re-arms for rtoAt
	}
	f.runTimerLocked()
}

// runTimerLocked schedules the runtime timer for rtoAt.
func (f *tcpFlow) runTimerLocked() {
	f.timerRunning = true
	f.timerAt = f.rtoAt
	d := time.Until(f.rtoAt)
	if f.timer == nil {
		f.timer = time.AfterFunc(d, f.onTimer)
		return
	}
	f.timer.Reset(d)
}

// onTimer retransmits or probes a closed window, with backoff, and gives
// up on a container that stays silent.
func (f *tcpFlow) onTimer() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.timerRunning = false
	if f.closed || !f.timerOn {
		return
	}
	if time.Until(f.rtoAt) > 0 {
		f.runTimerLocked() // early: the deadline moved on
		return
	}
	if f.state == fsConnecting {
		f.connectFailedLocked(unix.ETIMEDOUT)
		return
	}
	f.timerOn = false
	f.retries++
	if f.retries > fastRetries {
		f.closeLocked(true, true)
		return
	}
	if f.sndNxt != f.sndUna {
		f.retransmitLocked()
	} else {
		// A window probe: an old sequence number gets an ACK with
		// the current window.
		f.sendLocked(flagACK, f.sndUna-1, nil, 0)
	}
	f.rto = min(2*f.rto, fastRTOMax)
	f.restartTimerLocked()
}

// windowField is the window to advertise, in the header's units.
func (f *tcpFlow) windowField() uint16 {
	w := fastPendingMax - len(f.pending)
	if f.wsOK {
		return uint16(min(w>>fastRcvShift, 65535))
	}
	return uint16(min(w, 65535))
}

func (f *tcpFlow) sendAckLocked() { f.sendLocked(flagACK, f.sndNxt, nil, 0) }

func (f *tcpFlow) sendSynAckLocked() { f.sendLocked(flagSYN|flagACK, f.iss, nil, 0) }

// sendLocked writes one segment from seq with the flow's ACK and window:
// n bytes of payload, in pieces.
func (f *tcpFlow) sendLocked(flags header.TCPFlags, seq uint32, payload [][]byte, n int) {
	e := f.e
	o := tcpOut{
		srcMAC:  e.mac,
		dstMAC:  f.guestMAC,
		src:     f.key.dst,
		dst:     f.key.src,
		seq:     seq,
		ack:     f.rcvNxt,
		flags:   flags,
		payload: n,
		vnet:    e.vnet,
		gsoMSS:  f.mss,
		synWS:   -1,
	}
	if flags&flagACK == 0 {
		o.ack = 0
	}
	if flags&flagSYN != 0 {
		// A SYN's window is never scaled.
		o.wnd = uint16(min(fastPendingMax, 65535))
		o.synMSS = f.ourMSS
		if f.wsOK {
			o.synWS = fastRcvShift
		}
	} else {
		o.wnd = f.windowField()
		f.lastWnd = o.wnd
	}
	if flags&flagACK != 0 {
		f.ackOwed = 0
		f.ackTimerOn = false // the poller finds it off
	}

	if o.src.Addr().Is4() {
		o.ipID = uint16(e.ipID.Add(1))
	}
	if !e.vnet && n > 0 {
		var c checksum.Checksumer
		for _, p := range payload {
			c.Add(p)
		}
		o.sum = c.Checksum()
	}
	hl := buildTCP(f.hdr[:], &o)
	iovs := append(f.wiovs[:0], f.hdr[:hl])
	iovs = append(iovs, payload...)
	err := e.writev(iovs)
	clear(iovs)
	f.wiovs = iovs[:0]
	if err != nil {
		// A full TAP drops the frame, as for the stack's frames; the
		// timer sends it again.
		e.stats.TxErrors.Add(1)
		return
	}
	e.stats.TxFrames.Add(1)
}
