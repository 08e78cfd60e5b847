package relay

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Reading a datagram needs a 64 KiB buffer, but a UDP or DNS flow spends
// most of its life idle, waiting for its next datagram or its idle
// timeout. The functions here wait first and take a pooled buffer only
// once a datagram is there: a buffer per idle flow was most of the memory
// held after a soak (about 2000 live flows, 130 MiB of 150).

// PutDatagram returns a buffer from ReadHost or ReadGuest to the pool.
func PutDatagram(b *[]byte) { datagrams.Put(b) }

// ReadHost reads the next datagram of a connected host socket into a
// pooled buffer, waiting without one; host's read deadline applies. Errors
// are those of host.Read (a queued ICMP error such as ECONNREFUSED
// included).
func ReadHost(host *net.UDPConn) (*[]byte, int, error) {
	rc, err := host.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			// A zero-length peek: is a datagram (or an error) queued?
			_, _, perr = unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if perr != unix.EINTR {
				return perr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return nil, 0, err // deadline or closed, as from Read
	}
	if perr != nil {
		// The peek consumed the socket's pending error; report it as
		// Read would have.
		return nil, 0, &net.OpError{Op: "read", Net: "udp", Source: host.LocalAddr(), Addr: host.RemoteAddr(), Err: os.NewSyscallError("recvfrom", perr)}
	}
	bp := datagrams.Get().(*[]byte)
	n, err := host.Read(*bp) // a datagram is queued: returns at once

	if err != nil {
		datagrams.Put(bp)
		return nil, 0, err
	}
	return bp, n, nil
}

// ErrNothingQueued is ReadHostNow's answer when no datagram waits.
var ErrNothingQueued = errors.New("no datagram queued")

// ReadHostNow reads a datagram already queued on host (rc is its
// SyscallConn) into buf without waiting, so that in a burst the next
// datagram costs one syscall rather than ReadHost's peek and read. Errors
// are ReadHost's, or ErrNothingQueued.
func ReadHostNow(host *net.UDPConn, rc syscall.RawConn, buf []byte) (int, error) {
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = unix.Read(int(fd), buf)
			if rerr != unix.EINTR {
				return true // never wait
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == unix.EAGAIN:
		return 0, ErrNothingQueued
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "udp", Source: host.LocalAddr(), Addr: host.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	}
	return n, nil
}

// ReadGuest reads the next datagram of a netstack UDP flow (conn over ep
// and wq) into a pooled buffer, waiting without one until deadline
// (os.ErrDeadlineExceeded) or until ep has something to say: a datagram,
// or that it is closed (conn.Read's error).
func ReadGuest(conn *gonet.UDPConn, ep tcpip.Endpoint, wq *waiter.Queue, deadline time.Time) (*[]byte, int, error) {
	if ep.Readiness(waiter.ReadableEvents) == 0 {
		entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
		wq.EventRegister(&entry)
		timer := time.NewTimer(time.Until(deadline))
		for expired := false; !expired && ep.Readiness(waiter.ReadableEvents) == 0; {
			select {
			case <-ch:
			case <-timer.C:
				expired = true
			}
		}
		timer.Stop()
		wq.EventUnregister(&entry)
		if ep.Readiness(waiter.ReadableEvents) == 0 {
			return nil, 0, os.ErrDeadlineExceeded
		}
	}
	bp := datagrams.Get().(*[]byte)
	conn.SetReadDeadline(deadline)
	n, err := conn.Read(*bp)
	if err != nil {
		datagrams.Put(bp)
		if errors.Is(err, syscall.EAGAIN) {
			return nil, 0, os.ErrDeadlineExceeded
		}
		return nil, 0, err
	}
	return bp, n, nil
}
