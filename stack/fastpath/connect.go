package fastpath

import (
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// The handshake of a flow, and the host socket of an outbound one: made
// and connected on the read loop without blocking; the event loop
// reports the end of the connect. A published flow's side of it is in
// dial.go.

// handshake opens a flow and says how that ended: for an outbound flow,
// a connect to the host, then SYN-ACK to the container's SYN (or RST);
// for a published one, our SYN to the container and its SYN-ACK. It
// owns the initial sequence numbers and the callers waiting for the
// end. Its methods run under the flow's mu.
type handshake struct {
	f        *tcpFlow
	iss, irs uint32
	result   func(error) // outbound: told how the connect ended; may be nil
	// answered carries the end of a published flow's handshake to
	// DialTCP.
	answered chan error
}

// Keepalive as net.Dialer sets it by default, which the fast path's
// sockets had when they came from one.
const (
	fastKeepIdle  = 15 // seconds
	fastKeepIntvl = 15
	fastKeepCnt   = 9
)

// newOutboundFlow makes the flow of the container's SYN seg, owned by
// queue q, which read it.
func newOutboundFlow(t *tcpTable, q int, seg *tcpSeg, guestMAC tcpip.LinkAddress) *tcpFlow {
	key := tcpFlowKey{src: seg.src, dst: seg.dst}
	iss := t.isn(key)
	room := segRoom(int(t.link.MTU()), seg.src)
	mss := int(seg.mss)
	if mss == 0 {
		mss = 536 // RFC 9293's default
	}
	f := (&tcpFlow{
		t:        t,
		key:      key,
		guestMAC: guestMAC,
		fd:       -1,
		hs:       handshake{iss: iss, irs: seg.seq},
		snd:      sendSide{mss: max(min(mss, room), 64)},
		rcv:      recvSide{mss: uint16(min(room, 65535))},
		timers:   flowTimers{rto: fastRTOMin},
	}).wire(q)
	f.snd.start(iss)
	f.snd.peerWindow(seg.wnd, seg.wscale)
	f.rcv.start(seg.seq)
	f.rcv.scaleWindow(seg.wscale >= 0)
	return f
}

// connect starts d's connect; a failure answers the SYN with RST.
func (h *handshake) connect(d *TCPDial) {
	f := h.f
	fd, err := connectHost(d)
	if fd >= 0 {
		f.adoptHostLocked(fd) // closed with the flow, on failure too
	}
	if err == nil {
		// Registered after connect: the loop's first report for the
		// fd says whether it is connected (EPOLLOUT) or failed
		// (EPOLLERR).
		err = f.watchHostLocked()
	}
	if err != nil {
		h.connectFailed(err)
		return
	}
	if d.Timeout > 0 {
		f.timers.deadline(time.Now().Add(d.Timeout))
	}
}

// connectHost makes a non-blocking socket and starts its connect to
// d.To. It returns the socket (-1: none) also with an error.
func connectHost(d *TCPDial) (int, error) {
	to := d.To
	network, family := "tcp4", unix.AF_INET
	var sa unix.Sockaddr
	if a := to.Addr().Unmap(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: a.As4()}
	} else {
		network, family = "tcp6", unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: int(to.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if d.Control != nil {
		if err := d.Control(network, to.String(), rawFD(fd)); err != nil {
			return fd, err
		}
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, fastKeepIdle)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, fastKeepIntvl)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, fastKeepCnt)
	err = unix.Connect(fd, sa)
	if err == unix.EINTR {
		// The connect goes on in the background; the loop sees
		// its end as for EINPROGRESS.
		err = unix.EINPROGRESS
	}
	if err != nil && err != unix.EINPROGRESS {
		return fd, err
	}
	return fd, nil
}

// connected ends the connect the loop reported: on success it answers
// the container's SYN with SYN-ACK.
func (h *handshake) connected() {
	f := h.f
	soerr, err := unix.GetsockoptInt(f.hostFD(), unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soerr != 0 {
		err = syscall.Errno(soerr)
	}
	if err != nil {
		h.connectFailed(err)
		return
	}
	if h.result != nil {
		h.result(nil)
		h.result = nil
	}
	f.state = fsSynAckSent
	f.snd.synSent()
	f.timers.clearDeadline()
	h.sendSynAck()
	f.timers.arm()
}

// connectFailed answers the container's SYN with RST and ends the flow.
func (h *handshake) connectFailed(err error) {
	if h.result != nil {
		h.result(err)
		h.result = nil
	}
	h.f.sendLocked(flagRST|flagACK, 0, nil, 0)
	h.f.closeLocked(false, true)
}

func (h *handshake) sendSyn()    { h.f.sendLocked(flagSYN, h.iss, nil, 0) }
func (h *handshake) sendSynAck() { h.f.sendLocked(flagSYN|flagACK, h.iss, nil, 0) }

// syn takes a SYN from the container on a flow that has one already.
func (h *handshake) syn(s *tcpSeg) {
	f := h.f
	switch {
	case s.seq == h.irs:
		if f.state == fsSynAckSent {
			h.sendSynAck() // ours was lost
		}
	case f.state != fsConnecting:
		// A new connection on this 4-tuple while we hold the old
		// one: a challenge ACK (RFC 5961) makes the container
		// reset the old one, and its next SYN starts afresh.
		f.sendAckLocked()
	}
}

// resend sends again the SYN or SYN-ACK the container has not answered,
// and says whether the handshake had one out.
func (h *handshake) resend() bool {
	switch h.f.state {
	case fsSynAckSent:
		h.sendSynAck()
	case fsSynSent:
		h.sendSyn()
	default:
		return false
	}
	return true
}

// closing tells whoever still waits for the handshake that the flow
// ended.
func (h *handshake) closing() {
	if h.answered != nil {
		h.answer(errClosed) // a dial still waiting ends now
	}
	if h.f.state == fsConnecting && h.result != nil {
		h.result(errClosed)
	}
}

// rawFD is a socket fd as the syscall.RawConn that a Dialer's Control
// hook takes; only Control works.
type rawFD int

func (r rawFD) Control(fn func(fd uintptr)) error {
	fn(uintptr(r))
	return nil
}

func (r rawFD) Read(func(fd uintptr) bool) error  { return errors.ErrUnsupported }
func (r rawFD) Write(func(fd uintptr) bool) error { return errors.ErrUnsupported }
