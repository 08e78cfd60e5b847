// Package eventloop is the data path's own event loop: one goroutine
// waiting in epoll_wait for the TAP and the TCP fast path's host sockets,
// and running their handlers itself. In Go's poller each ready fd woke a
// goroutine through the scheduler: two hand-offs per request/response,
// a third of the user-space CPU of a round trip (docs/tcp-fastpath.md).
// The fds it serves are out of Go's poller (DetachFD), or Go's epoll
// would wake for each of their events too.
//
// It also keeps short deadlines (the fast path's delayed ACKs): arming a
// runtime timer for each of them can wake an idle thread out of Go's
// poller to shorten its sleep (the runtime's wakeNetPoller).
//
// Its interface: Handler (an fd's events), Waiter (a deadline's), and
// Loop's Add, Remove, Forget, Later and HandOff; New, Run, Stop and Close
// are its owner's (the link endpoint). The fds it serves are read and
// written with this package's raw calls (rawsys_linux.go).
package eventloop

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Loop is the event loop. Its zero value is not usable: see New.
type Loop struct {
	epfd   int
	wakefd int // eventfd: Close's wake-up

	mu sync.RWMutex
	// handlers is indexed by fd: fds are small and dense, and a map's
	// hash was a visible share of a round trip.
	handlers []Handler
	stopping bool

	// acks are the deadlines Later asked for (the flows owing a delayed
	// ACK). Only the loop touches them.
	acks deadlines
	// handedOff says a handler made a goroutine runnable (the netstack's,
	// a published dial's). It waits in this P's run queue, which the
	// loop holds while it sleeps in epoll_wait: the loop yields first,
	// or the goroutine waited for another thread to wake and steal it
	// (about 0.1-0.2 ms a time).
	handedOff atomic.Bool
	// viaGo: the loop waits in Go's poller, on the epoll fd itself (see
	// runViaGo). Set before run.
	viaGo bool
	// busyPoller is the busy loop's wait (busypoll.go).
	busyPoller
	done chan struct{}
}

// Handler serves one fd's events on the loop's goroutine.
type Handler interface {
	OnPoll(events uint32)
}

// Waiter is told on the loop when a deadline it asked for (Later) came.
type Waiter interface {
	// Due runs on the loop once request gen's deadline has passed.
	Due(gen uint32)
	// Wanted says whether request gen still stands; the loop drops
	// those that do not without waiting for them.
	Wanted(gen uint32) bool
}

// deadlines are the ones Later asked for, in order. Only the loop
// touches them.
type deadlines struct{ due []ackDue }

type ackDue struct {
	w   Waiter
	at  time.Time
	gen uint32
}

func (d *deadlines) later(w Waiter, gen uint32, at time.Time) {
	d.due = append(d.due, ackDue{w: w, at: at, gen: gen})
}

// fire tells the waiters whose deadline came and returns how long the
// loop may sleep: until the next one, or for good (-1).
func (d *deadlines) fire() time.Duration {
	if len(d.due) == 0 {
		return -1
	}
	now := time.Now()
	i := 0
	for ; i < len(d.due); i++ {
		a := d.due[i]
		if !a.at.After(now) {
			a.w.Due(a.gen)
			continue
		}
		if a.w.Wanted(a.gen) {
			break // the first still to come; stale ones go
		}
	}
	// Shift down rather than reslice, so that the array is kept: an
	// append per round trip allocated.
	left := copy(d.due, d.due[i:])
	clear(d.due[left:])
	d.due = d.due[:left]
	if left == 0 {
		return -1
	}
	return d.due[0].at.Sub(now)
}

// reset drops them all.
func (d *deadlines) reset() { d.due = nil }

// Edge is a socket's interest: edge-triggered, so its handler reads
// until EAGAIN or a short read. Level is the TAP's: level-triggered,
// one frame per call, as a read that finds the TAP empty cost a syscall
// per request.
const (
	Edge  = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	Level = unix.EPOLLIN
)

// New makes a loop that waits in Go's poller (SetViaGo) without busy
// polling (SetBusyPoll); Run starts it.
func New() (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	p := &Loop{epfd: epfd, wakefd: wakefd, done: make(chan struct{}), viaGo: true}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	return p, nil
}

// ErrClosed is Add's error once the loop is stopping.
var ErrClosed = errors.New("event loop closed")

// SetViaGo says whether the loop waits in Go's poller (see runViaGo)
// rather than in its own epoll_wait. Call it before Run.
func (p *Loop) SetViaGo(on bool) { p.viaGo = on }

// SetBusyPoll sets the longest busy-poll window (busypoll.go); 0 turns
// busy polling off. Call it before Run.
func (p *Loop) SetBusyPoll(d time.Duration) { p.busyPoll = max(0, min(d, MaxBusyPoll)) }

// HandOff tells the loop that a handler made a goroutine runnable: it
// yields before it waits again.
func (p *Loop) HandOff() { p.handedOff.Store(true) }

// Add registers fd for events (Edge or Level); h's OnPoll may run
// before Add returns.
func (p *Loop) Add(fd int, events uint32, h Handler) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return ErrClosed
	}
	for fd >= len(p.handlers) {
		p.handlers = append(p.handlers, nil)
	}
	p.handlers[fd] = h
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.handlers[fd] = nil
		return err
	}
	return nil
}

// Remove unregisters fd; call it before closing fd. An event the loop
// already holds for fd may still reach the next handler of that number,
// which must take a spurious event (every handler does: edge-triggered
// reads end at EAGAIN).
func (p *Loop) Remove(fd int) {
	p.Forget(fd)
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// Forget unregisters fd that is about to be closed, and is its only
// reference: the close takes it out of the epoll, which spares an
// epoll_ctl per connection.
func (p *Loop) Forget(fd int) {
	p.mu.Lock()
	if fd < len(p.handlers) {
		p.handlers[fd] = nil
	}
	p.mu.Unlock()
}

// Later asks the loop for w.Due(gen) at at. Deadlines must come in
// order (a constant delay from now keeps them so). On the loop only.
func (p *Loop) Later(w Waiter, gen uint32, at time.Time) { p.acks.later(w, gen, at) }

// Run is the loop; it returns after Stop.
func (p *Loop) Run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	if p.viaGo {
		p.runViaGo(events)
		return
	}
	busy := false
	for {
		timeout := p.acks.fire()
		var n int
		var err error
		if busy {
			n, busy, err = p.pollBusy(p.epfd, events, timeout)
		} else {
			n, err = epollWait(p.epfd, events, timeout, false)
			// Busy again: hold the P while there is another P for
			// the rest of the program.
			busy = n > 0 && runtime.GOMAXPROCS(0) > 1
		}
		if err != nil && err != unix.EINTR {
			// Only a broken epoll fd gets here: nothing to serve.
			return
		}
		if p.dispatch(events[:n]) {
			return
		}
		if p.handedOff.Swap(false) {
			runtime.Gosched()
		}
	}
}

// runViaGo is the loop for a link whose TCP goes through the netstack:
// it parks in Go's poller, which watches the epoll fd, so that the
// thread goes straight on to the stack's goroutines that a frame made
// runnable, as a goroutine reading the TAP did. From the loop's own
// epoll_wait they waited for another thread to steal them, or for the
// loop to yield (Gosched, which wakes a thread to take the loop): a
// 64-byte round trip through the netstack took 230 µs instead of 100.
func (p *Loop) runViaGo(events []unix.EpollEvent) {
	fd, err := unix.FcntlInt(uintptr(p.epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		return
	}
	file := os.NewFile(uintptr(fd), "epoll")
	defer file.Close()
	raw, err := file.SyscallConn()
	if err != nil {
		return
	}
	var n int
	var werr error
	wait := func(fd uintptr) bool {
		n, werr = epollWait(int(fd), events, 0, true)
		return n > 0 || werr != nil && werr != unix.EINTR
	}
	for {
		timeout := p.acks.fire()
		deadline := time.Time{}
		if timeout >= 0 {
			deadline = time.Now().Add(timeout)
		}
		file.SetReadDeadline(deadline)
		n = 0
		if err := raw.Read(wait); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		if werr != nil && werr != unix.EINTR {
			return
		}
		if p.dispatch(events[:n]) {
			return
		}
		p.handedOff.Store(false) // parking hands off
	}
}

// dispatch runs the handlers of events, and reports a stop request.
func (p *Loop) dispatch(events []unix.EpollEvent) (stop bool) {
	for i := range events {
		fd := events[i].Fd
		if fd == int32(p.wakefd) {
			p.mu.RLock()
			stop := p.stopping
			p.mu.RUnlock()
			if stop {
				return true
			}
			continue
		}
		var h Handler
		p.mu.RLock()
		if int(fd) < len(p.handlers) {
			h = p.handlers[fd]
		}
		p.mu.RUnlock()
		if h != nil {
			h.OnPoll(events[i].Events)
		}
	}
	return false
}

// Stop ends the loop and waits for it; the registered fds stay open
// (their owners close them). Run must have been started.
func (p *Loop) Stop() {
	p.mu.Lock()
	already := p.stopping
	p.stopping = true
	p.mu.Unlock()
	if !already {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		unix.Write(p.wakefd, one[:])
	}
	<-p.done
	p.acks.reset()
}

// Close frees the epoll and eventfd; after Stop, or when Run never ran.
func (p *Loop) Close() {
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
}

// epollWait waits up to timeout (-1: no limit) with epoll_pwait2's
// nanoseconds where the kernel has it (5.11), else epoll_pwait's
// milliseconds, rounded up so that a deadline is never early. raw makes
// the call without the runtime's syscall bookkeeping (see busyWait). An
// error comes with n = 0.
func epollWait(epfd int, events []unix.EpollEvent, timeout time.Duration, raw bool) (int, error) {
	var r uintptr
	var e syscall.Errno
	if timeout >= 0 && !noPwait2.Load() {
		ts := unix.NsecToTimespec(int64(timeout))
		if raw {
			r, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
		} else {
			r, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
		}
		if e != unix.ENOSYS {
			return epollResult(r, e)
		}
		noPwait2.Store(true)
	}
	msec := -1
	if timeout >= 0 {
		msec = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	if raw {
		r, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	} else {
		r, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	}
	return epollResult(r, e)
}

func epollResult(r uintptr, e syscall.Errno) (int, error) {
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// noPwait2 is set once the kernel lacks epoll_pwait2 (5.11); every link's
// loop reads it.
var noPwait2 atomic.Bool

// busyWait is how long the loop, once busy, waits for the next event
// while it keeps its P: it waits in a raw syscall, which the runtime
// sees as running code. The runtime's syscall path (entersyscall, the
// P left for sysmon to hand off, exitsyscall taking one back, the
// goroutine moved to another thread when the P was gone) cost 2-3 µs of
// a 64-byte round trip, p50 38.5 vs 36.0 µs (three interleaved pairs).
// After busyWait with no event the loop waits as a normal syscall again,
// so an idle link holds no P and wakes no one. The runtime can still
// stop the loop at any time: a preemption signal ends the wait (EINTR)
// and the loop's next call yields; and no raw wait lasts longer than
// busyWait. With GOMAXPROCS 1 the loop never holds its P: it is the
// only one.
const busyWait = 10 * time.Millisecond

// DetachFD takes c's fd out of Go's poller: it returns a duplicate the
// caller owns (non-blocking: the flag belongs to the open file, which
// both share) and closes c, whose close unregisters it from Go's epoll.
func DetachFD(c interface {
	SyscallConn() (syscall.RawConn, error)
	Close() error
}) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return -1, err
	}
	fd := -1
	var derr error
	cerr := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	c.Close()
	if cerr != nil {
		derr = cerr
	}
	if derr != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, derr
	}
	return fd, nil
}
