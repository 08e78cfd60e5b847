package eventloop

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The busy loop's wait (see busypoll.go).

// busyPoller is a busy loop's wait: the spin and its adapting window.
// Loop embeds it.
type busyPoller struct {
	// busyPoll is the longest busy-poll window, 0 for none; set before
	// run. spinLimit is the window now, in nanoseconds: the loop's,
	// atomic for tests.
	busyPoll  time.Duration
	spinLimit atomic.Int64
}

// pollBusy is the busy loop's wait, up to timeout (-1: none): a spin
// first (see busypoll.go), then a raw epoll_wait that keeps the P (see
// busyWait), for at most busyWait. stillBusy is false once that passed
// with no event.
func (p *busyPoller) pollBusy(epfd int, events []unix.EpollEvent, timeout time.Duration) (n int, stillBusy bool, err error) {
	began := time.Now()
	if limit := time.Duration(p.spinLimit.Load()); limit > 0 {
		n, err = spin(epfd, events, began, limit, timeout)
	}
	idle := false
	if n == 0 && err == nil {
		wait := busyWait
		if timeout >= 0 {
			wait = min(wait, timeout-time.Since(began))
		}
		if wait > 0 {
			n, err = epollWait(epfd, events, wait, true)
			idle = err == nil && n == 0 && wait == busyWait
		}
	}
	if waited := time.Since(began); n > 0 || waited > p.busyPoll {
		p.spinLimit.Store(int64(nextSpin(time.Duration(p.spinLimit.Load()), waited, p.busyPoll)))
	}
	return n, !idle, err
}

// spin polls the epoll without sleeping until an event, or until limit
// or the timeout (-1: none) passed since began.
func spin(epfd int, events []unix.EpollEvent, began time.Time, limit, timeout time.Duration) (int, error) {
	if timeout >= 0 {
		limit = min(limit, timeout)
	}
	for {
		n, err := epollWait(epfd, events, 0, true)
		if n > 0 || err != nil || time.Since(began) >= limit {
			return n, err
		}
		// Let a thread that shares this CPU run: the container's or
		// the host's peer makes the next event. Without it the
		// spin delayed them: p99 90 µs against 55.
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}
