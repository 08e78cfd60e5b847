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
	if err := waitDatagram(host, rc); err != nil {
		return nil, 0, err
	}
	bp := datagrams.Get().(*[]byte)
	n, err := host.Read(*bp) // a datagram is queued: returns at once
	if err != nil {
		datagrams.Put(bp)
		return nil, 0, err
	}
	return bp, n, nil
}

// waitDatagram waits until host (rc is its SyscallConn) has a datagram
// queued, without reading it; host's read deadline applies. Errors are
// those of host.Read (a queued ICMP error such as ECONNREFUSED included).
func waitDatagram(host *net.UDPConn, rc syscall.RawConn) error {
	var perr error
	err := rc.Read(func(fd uintptr) bool {
		for {
			// A zero-length peek: is a datagram (or an error) queued?
			_, _, perr = unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if perr != unix.EINTR {
				return perr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err // deadline or closed, as from Read
	}
	if perr != nil {
		// The peek consumed the socket's pending error; report it as
		// Read would have.
		return &net.OpError{Op: "read", Net: "udp", Source: host.LocalAddr(), Addr: host.RemoteAddr(), Err: os.NewSyscallError("recvfrom", perr)}
	}
	return nil
}

// ErrNothingQueued is the answer of a read that would wait.
var ErrNothingQueued = errors.New("no datagram queued")

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
