package eventloop

import "time"

// Busy polling: once a link is busy, its loop polls its epoll without
// sleeping for a short while after each batch of events, as the kernel's
// SO_BUSY_POLL polls a NIC and KVM's guest halt-polling polls before a
// vCPU halts. A request/response exchange brings the next event a few
// microseconds after the last one, and a thread that slept for it first
// waits for its CPU to wake: on this project's 2-CPU VM, whose idle CPUs
// halt, that was 2-3 µs twice per round trip (docs/benchmarks.md).
//
// The window adapts as the halt-polling governor's does
// (drivers/cpuidle/governors/haltpoll.c): it grows when the next event
// came after the window but within the most it may reach, and shrinks
// when it came later than that, so a link whose events are too far apart
// to catch stops spinning. An idle link never spins: the loop spins only
// while busy (see busyWait).

// DefaultBusyPoll is the longest busy-poll window (--busy-poll).
const DefaultBusyPoll = 50 * time.Microsecond

// MaxBusyPoll bounds --busy-poll: a longer spin holds a CPU for events
// that a sleep would wait for just as well.
const MaxBusyPoll = time.Millisecond

// nextSpin is the busy-poll window that follows a wait which lasted
// waited (until an event, or until it gave up) with the window at limit
// and its ceiling at ceiling. The window opens at an eighth of ceiling,
// doubles, and halves back to zero.
func nextSpin(limit, waited, ceiling time.Duration) time.Duration {
	start := ceiling / 8
	switch {
	case ceiling <= 0:
		return 0
	case waited <= limit:
		return limit // caught it: keep the window
	case waited <= ceiling:
		// A longer window would have caught it.
		return min(ceiling, max(2*limit, start))
	default:
		// Too far apart to catch: spinning only burns the CPU.
		limit /= 2
		if limit < start {
			return 0
		}
		return limit
	}
}
