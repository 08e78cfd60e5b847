package fastpath

import (
	"time"

	"golang.org/x/sys/unix"
)

// A flow's timers: retransmission (with backoff, window probes, the
// connect's deadline) and the delayed ACK that the event loop keeps.

// Due sends a delayed ACK that no segment carried (request gen): the
// loop's eventloop.Waiter.
func (f *tcpFlow) Due(gen uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || !f.ackTimerOn || gen != f.ackGen {
		return
	}
	f.ackTimerOn = false
	if f.ackOwed > 0 {
		f.sendAckLocked()
	}
}

// Wanted says whether request gen of a delayed ACK still stands.
func (f *tcpFlow) Wanted(gen uint32) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.closed && f.ackTimerOn && gen == f.ackGen
}

// armLocked starts the timer if something waits on the container: an
// acknowledgment, or a window that closed with data to send.
func (f *tcpFlow) armLocked() {
	if !f.timerWantedLocked() {
		f.timerOn = false // lazy: onTimer finds it off
		return
	}
	if f.timerOn {
		return
	}
	f.restartTimerLocked()
}

func (f *tcpFlow) timerWantedLocked() bool {
	if f.state == fsConnecting {
		return !f.rtoAt.IsZero() // the connect's deadline
	}
	return f.sndNxt != f.sndUna || f.state == fsEstablished && f.sndWnd == 0
}

// restartTimerLocked (re)starts the timer from now if it is needed.
func (f *tcpFlow) restartTimerLocked() {
	if !f.timerWantedLocked() {
		f.timerOn = false
		return
	}
	f.timerOn = true
	if f.state != fsConnecting {
		f.rtoAt = time.Now().Add(f.rto)
	}
	if f.timerRunning && !f.rtoAt.Before(f.timerAt) {
		return // it fires early and re-arms for rtoAt
	}
	f.runTimerLocked()
}

// runTimerLocked schedules the runtime timer for rtoAt.
func (f *tcpFlow) runTimerLocked() {
	f.timerRunning = true
	f.timerAt = f.rtoAt
	d := time.Until(f.rtoAt)
	if f.timer == nil {
		f.timer = time.AfterFunc(d, f.onTimer)
		return
	}
	f.timer.Reset(d)
}

// onTimer retransmits or probes a closed window, with backoff, and gives
// up on a container that stays silent.
func (f *tcpFlow) onTimer() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.timerRunning = false
	if f.closed || !f.timerOn {
		return
	}
	if time.Until(f.rtoAt) > 0 {
		f.runTimerLocked() // early: the deadline moved on
		return
	}
	if f.state == fsConnecting {
		f.connectFailedLocked(unix.ETIMEDOUT)
		return
	}
	f.timerOn = false
	f.retries++
	if f.retries > fastRetries {
		f.closeLocked(true, true)
		return
	}
	if f.sndNxt != f.sndUna {
		f.retransmitLocked()
	} else {
		// A window probe: an old sequence number gets an ACK with
		// the current window.
		f.sendLocked(flagACK, f.sndUna-1, nil, 0)
	}
	f.rto = min(2*f.rto, fastRTOMax)
	f.restartTimerLocked()
}
