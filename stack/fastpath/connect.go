package fastpath

import (
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// The host socket of an outbound flow: made and connected on the read
// loop without blocking; the event loop reports the end of the connect.

// Keepalive as net.Dialer sets it by default, which the fast path's
// sockets had when they came from one.
const (
	fastKeepIdle  = 15 // seconds
	fastKeepIntvl = 15
	fastKeepCnt   = 9
)

// connectLocked starts d's connect; a failure answers the SYN with RST.
func (f *tcpFlow) connectLocked(d *TCPDial) {
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
		f.connectFailedLocked(err)
		return
	}
	f.fd = fd
	if d.Control != nil {
		if err := d.Control(network, to.String(), rawFD(fd)); err != nil {
			f.connectFailedLocked(err)
			return
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
		f.connectFailedLocked(err)
		return
	}
	// Registered after connect: the loop's first report for the fd
	// says whether it is connected (EPOLLOUT) or failed (EPOLLERR).
	if err := f.t.loop.Add(fd, eventloop.Edge, f); err != nil {
		f.connectFailedLocked(err)
		return
	}
	if d.Timeout > 0 {
		f.rtoAt = time.Now().Add(d.Timeout)
		f.restartTimerLocked()
	}
}

// connectedLocked ends the connect the loop reported: on success it
// answers the container's SYN with SYN-ACK.
func (f *tcpFlow) connectedLocked() {
	soerr, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soerr != 0 {
		err = syscall.Errno(soerr)
	}
	if err != nil {
		f.connectFailedLocked(err)
		return
	}
	if f.result != nil {
		f.result(nil)
		f.result = nil
	}
	f.state = fsSynAckSent
	f.sndNxt = f.iss + 1
	f.rtoAt = time.Time{}
	f.timerOn = false
	f.sendSynAckLocked()
	f.armLocked()
}

// connectFailedLocked answers the container's SYN with RST and ends the
// flow.
func (f *tcpFlow) connectFailedLocked(err error) {
	if f.result != nil {
		f.result(err)
		f.result = nil
	}
	f.sendLocked(flagRST|flagACK, 0, nil, 0)
	f.closeLocked(false, true)
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
