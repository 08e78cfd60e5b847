package fastpath

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A TCP flow of the fast path: its identity, state machine and host
// socket (tcpFlow, here; its end in close.go), composed of a part per
// job, each with the state it owns: the handshake (handshake: connect.go
// for outbound flows, dial.go for published ones), the host's data to the
// container (sendSide, send.go), the container's data to the host
// (recvSide, receive.go, with hostWriter for what a full host socket has
// not taken) and the retransmission timer (flowTimers, timers.go). The
// parts call each other through small methods, all under the flow's mu.

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

type flowState uint8

const (
	fsConnecting  flowState = iota // dialing the host
	fsSynAckSent                   // waiting for the container's ACK
	fsSynSent                      // a published port's SYN, waiting for the container's SYN-ACK
	fsEstablished                  // data both ways
)

// tcpFlow is one connection on the fast path. mu guards everything,
// its parts' state too; the loop's goroutine holds it to apply a segment
// and to move host data, timers and a published flow's dial to do their
// part. Sequence variables are named as in RFC 9293: the send side's
// for what goes to the container, the receive side's for what comes
// from it.
type tcpFlow struct {
	t        *tcpTable
	key      tcpFlowKey // src: the container's end; dst: the peer it sees
	guestMAC tcpip.LinkAddress
	done     func() // the policy's, once at the end; may be nil
	// ended is closed at the end of a published flow (carry waits).
	ended chan struct{}
	// q is the TAP queue that owns the flow: its frames to the container
	// go there, and loop, that queue's, serves its host socket.
	q    int
	loop *eventloop.Loop

	mu     sync.Mutex
	state  flowState
	closed bool
	// fd is the host socket, out of Go's poller (-1: none yet, or
	// closed).
	fd int

	hs     handshake
	snd    sendSide
	rcv    recvSide
	timers flowTimers
	out    segWriter
	// moved counts the payload bytes of the flow's segments both ways;
	// sampled is what it was at the last Path.SampleLoad.
	moved, sampled uint64
	// rxLoop is the loop applying a segment of the container's now
	// (applyLocked), whose own deadlines a delayed ACK joins: nil
	// otherwise.
	rxLoop *eventloop.Loop
}

// wire points f's parts at f, owned by queue q; every new flow is wired
// once.
func (f *tcpFlow) wire(q int) *tcpFlow {
	f.hs.f, f.snd.f, f.rcv.f, f.timers.f = f, f, f, f
	f.q, f.loop = q, f.t.queues[q].loop
	return f
}

// runningLoop is the loop running the flow's code now, if that is known:
// the one applying a segment, or else the flow's own (its host socket's
// events, and its start); a timer's goroutine is on none, and then it
// does not matter.
func (f *tcpFlow) runningLoop() *eventloop.Loop {
	if f.rxLoop != nil {
		return f.rxLoop
	}
	return f.loop
}

// The parts ask the flow through these.

func (f *tcpFlow) isClosed() bool    { return f.closed }
func (f *tcpFlow) connecting() bool  { return f.state == fsConnecting }
func (f *tcpFlow) established() bool { return f.state == fsEstablished }

// open says whether data may move: established and not closed.
func (f *tcpFlow) open() bool { return f.state == fsEstablished && !f.closed }

// hostFD is the host socket (-1: none yet, or closed).
func (f *tcpFlow) hostFD() int { return f.fd }

// gso says whether segments to the container may be super-frames.
func (f *tcpFlow) gso() bool { return f.t.link.VnetHdr() }

// adoptHostLocked makes fd the flow's host socket, closed with it.
func (f *tcpFlow) adoptHostLocked(fd int) { f.fd = fd }

// watchHostLocked registers the host socket with the loop: its events
// come to OnPoll.
func (f *tcpFlow) watchHostLocked() error { return f.loop.Add(f.fd, eventloop.Edge, f) }

// synAckedLocked establishes a flow whose SYN-ACK the container
// acknowledged, and says whether it did.
func (f *tcpFlow) synAckedLocked() bool {
	if f.state != fsSynAckSent {
		return false
	}
	f.state = fsEstablished
	return true
}

// OnPoll takes the host socket's events on the loop (eventloop.Handler).
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
		f.hs.connected()
	}
	f.snd.hostEvents(events)
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		f.rcv.hostWritable()
	}
	f.snd.pumpHost()
}

// applyLocked applies a segment read as hdr then rest by loop (the
// flow's own, or another queue's).
func (f *tcpFlow) applyLocked(loop *eventloop.Loop, seg *tcpSeg, hdr, rest []byte) {
	f.moved += uint64(seg.n)
	f.rxLoop = loop
	f.rcv.takePayload(hdr, rest, seg)
	f.segmentLocked(seg)
	f.rcv.dropPayload()
	f.rxLoop = nil
}

// segmentLocked applies a segment from the container, its payload
// taken by the receive side.
func (f *tcpFlow) segmentLocked(s *tcpSeg) {
	switch {
	case f.closed:
	case f.state == fsSynSent:
		f.hs.synSent(s)
	case s.flags&flagRST != 0:
		// Accept a reset within the window (RFC 5961 would ask for an
		// exact match; a TAP carries no blind attackers).
		if f.state == fsConnecting || f.rcv.inWindow(s.seq) {
			f.closeLocked(false, true)
		}
	case s.flags&flagSYN != 0:
		f.hs.syn(s)
	case f.state == fsConnecting || s.flags&flagACK == 0:
	default:
		f.snd.ack(s)
		if f.closed || f.state != fsEstablished {
			return
		}
		if s.n > 0 || s.flags&flagFIN != 0 {
			f.rcv.data(s)
		}
		f.maybeFinishLocked()
	}
}

// retransmitLocked sends again the first unacknowledged segment: the
// handshake's, or data or FIN.
func (f *tcpFlow) retransmitLocked() {
	if !f.hs.resend() {
		f.snd.retransmit()
	}
}

func (f *tcpFlow) sendAckLocked() { f.sendLocked(flagACK, f.snd.next(), nil, 0) }

// sendLocked writes one segment from seq with the flow's ACK and window:
// n bytes of payload, in pieces.
func (f *tcpFlow) sendLocked(flags header.TCPFlags, seq uint32, payload [][]byte, n int) {
	o := tcpOut{
		srcMAC:  f.t.mac,
		dstMAC:  f.guestMAC,
		src:     f.key.dst,
		dst:     f.key.src,
		seq:     seq,
		flags:   flags,
		payload: n,
		vnet:    f.t.link.VnetHdr(),
		gsoMSS:  f.snd.segSize(),
		synWS:   -1,
	}
	if flags&flagSYN != 0 {
		o.wnd, o.synMSS, o.synWS = f.rcv.synOffer()
	} else {
		o.wnd = f.rcv.advertise()
	}
	if flags&flagACK != 0 {
		o.ack = f.rcv.acking()
	}
	// A full TAP drops the frame, as for the stack's frames; the timer
	// sends it again.
	f.moved += uint64(n)
	f.out.write(f.t.core, f.q, &o, payload)
}
