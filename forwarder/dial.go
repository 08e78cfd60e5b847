package forwarder

import (
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// connectAtOnce wraps a dialer so that its connections start in its
// Control hook: the hook runs d's own Control (outbound binding) and then
// connect(2), and when the handshake completed inside that call, as it
// does with a loopback peer, the dialer's own connect finds the socket
// connected (it returns 0 or EISCONN) and returns without parking on the
// poller. With one P, that park let other runnable work (a closing flow's
// relay) run before this flow's SYN-ACK: conn/s +4 to +14% in three A/Bs.
func connectAtOnce(d *net.Dialer) *net.Dialer {
	fast := *d
	bind := d.Control
	fast.Control = func(network, address string, c syscall.RawConn) error {
		if bind != nil {
			if err := bind(network, address, c); err != nil {
				return err
			}
		}
		if network != "tcp4" && network != "tcp6" {
			return nil
		}
		to, err := netip.ParseAddrPort(address)
		if err != nil || to.Addr().Zone() != "" {
			return nil // the dialer connects as usual
		}
		var sa unix.Sockaddr
		switch a := to.Addr(); {
		case network == "tcp6":
			sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: a.As16()}
		case a.Unmap().Is4():
			sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: a.Unmap().As4()}
		default:
			return nil // the dialer connects as usual
		}
		var cerr error
		if err := c.Control(func(fd uintptr) { cerr = connectNow(int(fd), sa) }); err != nil {
			return err
		}
		return cerr
	}
	return &fast
}

// connectNow starts a non-blocking connect and reports its failure if it
// failed at once; a connect still in progress is left to the dialer.
func connectNow(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	switch err {
	case nil:
		return nil
	case unix.EINPROGRESS, unix.EINTR:
	default:
		return err
	}
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	if n, _ := unix.Poll(p, 0); n == 0 {
		return nil // still in progress
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soerr != 0 {
		return syscall.Errno(soerr)
	}
	return nil
}
