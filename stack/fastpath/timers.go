package fastpath

import (
	"time"

	"golang.org/x/sys/unix"
)

// A flow's retransmission timer: retransmission with backoff, window
// probes, and the connect's deadline. (The delayed ACK is the receive
// side's, on the event loop.)

// flowTimers is a flow's retransmission timer and its backoff. The timer
// is lazy: on says it is wanted, for rtoAt; the runtime timer (running)
// is not reset per segment but re-armed when it fires early, as a reset
// can wake an idle thread out of Go's poller. Its methods run under the
// flow's mu, but fire, the runtime timer's, which takes it.
type flowTimers struct {
	f       *tcpFlow
	rto     time.Duration
	retries int
	timer   *time.Timer
	on      bool
	running bool
	rtoAt   time.Time // when the timer is wanted
	timerAt time.Time // when the runtime timer fires
}

// deadline bounds a connect: at its end, fire fails it.
func (tm *flowTimers) deadline(at time.Time) {
	tm.rtoAt = at
	tm.restart()
}

// clearDeadline drops the connect's deadline: it has ended.
func (tm *flowTimers) clearDeadline() {
	tm.rtoAt = time.Time{}
	tm.on = false
}

// alive says the container answered: its retries start afresh.
func (tm *flowTimers) alive() { tm.retries = 0 }

// acked says the container acknowledged new data: the backoff ends and
// the timer restarts from now if something is still owed.
func (tm *flowTimers) acked() {
	tm.retries = 0
	tm.rto = fastRTOMin
	tm.restart()
}

// stop stops the runtime timer, at the flow's end.
func (tm *flowTimers) stop() {
	if tm.timer != nil {
		tm.timer.Stop()
	}
}

// arm starts the timer if something waits on the container: an
// acknowledgment, or a window that closed with data to send.
func (tm *flowTimers) arm() {
	if !tm.wanted() {
		tm.on = false // lazy: fire finds it off
		return
	}
	if tm.on {
		return
	}
	tm.restart()
}

func (tm *flowTimers) wanted() bool {
	if tm.f.connecting() {
		return !tm.rtoAt.IsZero() // the connect's deadline
	}
	return tm.f.snd.waiting()
}

// restart (re)starts the timer from now if it is needed.
func (tm *flowTimers) restart() {
	if !tm.wanted() {
		tm.on = false
		return
	}
	tm.on = true
	if !tm.f.connecting() {
		tm.rtoAt = time.Now().Add(tm.rto)
	}
	if tm.running && !tm.rtoAt.Before(tm.timerAt) {
		return // it fires early and re-arms for rtoAt
	}
	tm.run()
}

// run schedules the runtime timer for rtoAt.
func (tm *flowTimers) run() {
	tm.running = true
	tm.timerAt = tm.rtoAt
	d := time.Until(tm.rtoAt)
	if tm.timer == nil {
		tm.timer = time.AfterFunc(d, tm.fire)
		return
	}
	tm.timer.Reset(d)
}

// fire retransmits or probes a closed window, with backoff, and gives
// up on a container that stays silent.
func (tm *flowTimers) fire() {
	f := tm.f
	f.mu.Lock()
	defer f.mu.Unlock()
	tm.running = false
	if f.isClosed() || !tm.on {
		return
	}
	if time.Until(tm.rtoAt) > 0 {
		tm.run() // early: the deadline moved on
		return
	}
	if f.connecting() {
		f.hs.connectFailed(unix.ETIMEDOUT)
		return
	}
	tm.on = false
	tm.retries++
	if tm.retries > fastRetries {
		f.closeLocked(true, true)
		return
	}
	if f.snd.unacked() {
		f.retransmitLocked()
	} else {
		f.snd.probe()
	}
	tm.rto = min(2*tm.rto, fastRTOMax)
	tm.restart()
}
