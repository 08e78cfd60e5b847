package fastpath

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A TCP flow of the fast path: its state and the host socket's events.
// What it does is split by side: connect.go and dial.go (the handshake,
// outbound and published), receive.go (the container's segments),
// send.go (the host's data to the container), timers.go and close.go.

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

// tcpFlow is one connection on the fast path. mu guards everything; the
// loop's goroutine holds it to apply a segment and to move host data,
// timers and a published flow's dial to do their part. Sequence
// variables are named as in RFC 9293: snd* for what goes to the
// container, rcv* for what comes from it.
type tcpFlow struct {
	t        *tcpTable
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
	// loop sends the ACK that no segment of ours carried in time
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
