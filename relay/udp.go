package relay

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// datagrams are the buffers of UDPToHost: one per drain in progress, not
// one per flow.
var datagrams = sync.Pool{New: func() any { b := make([]byte, 65535); return &b }}

// UDPToHost forwards every datagram the netstack endpoint ep receives to
// the connected host socket, on the goroutine that delivered it to the
// stack (the TAP read loop), as slirp4netns does on its one thread: a
// hand-off to a relay goroutine per datagram let the read loop outrun it,
// and 70% of a flood was processed by the stack only to be dropped at the
// endpoint's full receive buffer. Writes never block (a full host socket
// drops, as UDP may). seen is called with each datagram's size. The
// returned function (idempotent) stops forwarding; call it before closing
// ep or host.
func UDPToHost(ep tcpip.Endpoint, wq *waiter.Queue, host *net.UDPConn, seen func(n int)) (stop func(), err error) {
	rc, err := host.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex // one drain at a time
		pending atomic.Bool
		stopped atomic.Bool
	)
	drainOnce := func(buf []byte) {
		for !stopped.Load() {
			w := tcpip.SliceWriter(buf)
			res, terr := ep.Read(&w, tcpip.ReadOptions{})
			if terr != nil {
				// ErrWouldBlock: empty; anything else: the endpoint
				// is closing and its owner notices on its side.
				return
			}
			n := res.Count
			rc.Write(func(fd uintptr) bool {
				for {
					// sendmsg: a zero-length write would
					// not send the empty datagram.
					_, werr := unix.SendmsgN(int(fd), buf[:n], nil, nil, 0)
					if !errors.Is(werr, syscall.EINTR) {
						return true
					}
				}
			})
			seen(n)
		}
	}
	// drain empties the endpoint. A datagram that arrives while another
	// goroutine drains sets pending, which that drain sees before it
	// lets go, so no datagram is left behind (the stack notifies only
	// when the queue goes from empty to non-empty).
	drain := func(waiter.EventMask) {
		pending.Store(true)
		for pending.Load() && mu.TryLock() {
			pending.Store(false)
			bp := datagrams.Get().(*[]byte)
			drainOnce(*bp)
			datagrams.Put(bp)
			mu.Unlock()
		}
	}
	entry := waiter.NewFunctionEntry(waiter.ReadableEvents, drain)
	wq.EventRegister(&entry)
	// Datagrams that arrived before the registration.
	drain(waiter.ReadableEvents)
	var once sync.Once
	return func() {
		once.Do(func() {
			stopped.Store(true)
			wq.EventUnregister(&entry)
			// Wait for a drain in progress.
			mu.Lock()
			mu.Unlock()
		})
	}, nil
}
