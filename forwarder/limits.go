package forwarder

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxFlows is the default cap on concurrent TCP and UDP flows from
// the container (DNS ones included). Each flow holds a host fd, two or
// three goroutines and netstack buffers; 65536 is 40 times the 1500
// connections the tests hold and more than a container can open to one
// server port from its one address, while it stops a runaway container
// long before it takes the host's memory (the fd limit, which Go raises
// to the hard limit, often 524288, would not).
const DefaultMaxFlows = 65536

// episodeQuiet is how long no flow must have been refused before an
// episode of refusals is reported over: a workload hovering at a limit
// logs one warning, not one per flow.
const episodeQuiet = time.Second

// episode reports a stretch of refused flows with one warning when it
// starts and one line once flows are accepted again and none was refused
// for episodeQuiet.
type episode struct {
	on atomic.Bool // fast path for ok

	mu          sync.Mutex
	refused     int
	lastRefusal time.Time
	resumed     bool        // a flow was accepted since the last refusal
	timer       *time.Timer // reports the end once quiet; fires once
}

// refuse counts a refused flow; the first of an episode logs msg.
func (e *episode) refuse(log *slog.Logger, msg string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastRefusal = time.Now()
	e.refused++
	e.resumed = false
	if !e.on.Load() {
		e.on.Store(true)
		log.Warn(msg, args...)
	}
}

// ok notes a flow accepted (or ended): the episode ends now if nothing was
// refused for episodeQuiet, or then, unless a refusal comes first.
func (e *episode) ok(log *slog.Logger, msg string) {
	if !e.on.Load() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.on.Load() {
		return
	}
	e.resumed = true
	e.endIfQuiet(log, msg)
}

// endIfQuiet ends the episode or arms the timer to look again. e.mu held.
func (e *episode) endIfQuiet(log *slog.Logger, msg string) {
	if wait := episodeQuiet - time.Since(e.lastRefusal); wait > 0 {
		if e.timer == nil {
			e.timer = time.AfterFunc(wait, func() {
				e.mu.Lock()
				defer e.mu.Unlock()
				e.timer = nil
				if e.on.Load() && e.resumed {
					e.endIfQuiet(log, msg)
				}
			})
		}
		return
	}
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	log.Info(msg, "refused", e.refused)
	e.refused, e.resumed = 0, false
	e.on.Store(false)
}

// limits are the forwarder's flow accounting.
type limits struct {
	max   atomic.Int64 // 0: DefaultMaxFlows (the zero value); <0: no cap
	flows atomic.Int64 // TCP and UDP flows from the container, live or being set up
	capEp episode
	fdEp  episode
}

// SetMaxFlows caps the concurrent TCP and UDP flows from the container; 0
// removes the cap. Flows beyond it are refused: TCP with RST, UDP with
// ICMP port unreachable, so that the application fails at once instead of
// retrying into a timeout. Flows already up are never cut.
func (f *Forwarder) SetMaxFlows(n int) {
	if n <= 0 {
		f.lim.max.Store(-1)
		return
	}
	f.lim.max.Store(int64(n))
}

// maxFlows is the cap in force; 0 when there is none.
func (l *limits) maxFlows() int64 {
	switch m := l.max.Load(); {
	case m == 0:
		return DefaultMaxFlows
	case m < 0:
		return 0
	default:
		return m
	}
}

// Flows returns the number of TCP and UDP flows currently counted.
func (f *Forwarder) Flows() int { return int(f.lim.flows.Load()) }

// startFlow counts a new flow, or returns false when the cap is reached.
// Every true must be paired with one endFlow.
func (f *Forwarder) startFlow(proto string) bool {
	n := f.lim.flows.Add(1)
	if m := f.lim.maxFlows(); m > 0 && n > m {
		f.lim.flows.Add(-1)
		f.lim.capEp.refuse(f.log, "flow limit reached: refusing new flows until some end", "max_flows", m, "proto", proto)
		return false
	}
	f.lim.capEp.ok(f.log, "flow limit: accepting new flows again")
	return true
}

// endFlow uncounts a flow that startFlow counted.
func (f *Forwarder) endFlow() {
	f.lim.flows.Add(-1)
	f.lim.capEp.ok(f.log, "flow limit: accepting new flows again")
}

// hostSocketFailed notes that making a host socket for a flow failed; it
// reports whether the cause is fd exhaustion (EMFILE, ENFILE: logged once
// per episode, the flow refused like any other failure).
func (f *Forwarder) hostSocketFailed(err error) bool {
	if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) {
		return false
	}
	f.lim.fdEp.refuse(f.log, "out of file descriptors: refusing new flows until some end (raise RLIMIT_NOFILE or lower --max-flows)", "flows", f.Flows(), "err", err)
	return true
}

// hostSocketMade notes that a host socket was made: an fd episode is over.
func (f *Forwarder) hostSocketMade() {
	f.lim.fdEp.ok(f.log, "file descriptors available again: accepting new flows")
}
