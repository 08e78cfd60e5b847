package fastpath

import (
	"cmp"
	"slices"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// A multi-queue TAP pays for its steering on every frame once two queues
// are attached, a single flow included; so the caller may keep only the
// first queue attached while few flows are busy (link.SetActiveQueues),
// and spread the busy ones over more queues when there are several.
// SampleLoad says which flows are busy; Spread moves flows to the queues
// that are to be attached. A flow moves by handing its host socket to
// the new queue's loop and writing its frames on that queue, which
// steers the container's frames of the flow there too.

// Load is the TCP flows' traffic since the last SampleLoad.
type Load struct {
	busy []busyFlow // most bytes first
	all  []*tcpFlow
}

type busyFlow struct {
	f     *tcpFlow
	bytes uint64
}

// Busy is the number of busy flows.
func (l *Load) Busy() int { return len(l.busy) }

// SampleLoad takes each TCP flow's bytes since the last call: a flow is
// busy if it moved at least minBytes.
func (p *Path) SampleLoad(minBytes uint64) Load {
	var l Load
	if p.tcp.policy == nil {
		return l
	}
	l.all = p.tcp.snapshot()
	for _, f := range l.all {
		f.mu.Lock()
		n := f.moved - f.sampled
		f.sampled = f.moved
		f.mu.Unlock()
		if n >= minBytes {
			l.busy = append(l.busy, busyFlow{f, n})
		}
	}
	slices.SortFunc(l.busy, func(a, b busyFlow) int { return cmp.Compare(b.bytes, a.bytes) })
	return l
}

// Spread places l's flows on the first active queues: the busy ones
// evenly by count, each staying where it is while its queue has no more
// than its share; flows on a queue beyond active move to one of them.
// Call it before detaching queues, and after attaching them. It
// returns how many flows moved.
func (p *Path) Spread(l Load, active int) (moved int) {
	active = max(1, min(active, len(p.queues)))
	on := make([]int, len(l.busy))
	busy := make(map[*tcpFlow]bool, len(l.busy))
	for i, b := range l.busy {
		on[i] = b.f.queue()
		busy[b.f] = true
	}
	for i, q := range placeBusy(on, active) {
		if l.busy[i].f.move(q) {
			moved++
		}
	}
	for i, f := range l.all {
		if !busy[f] && f.queue() >= active && f.move(i%active) {
			moved++
		}
	}
	return moved
}

// placeBusy gives the queue of each busy flow, of those on queues on
// now: as even by count as can be over the first active queues, each
// flow staying where it is while its queue has no more than its share,
// so that as few as possible move.
func placeBusy(on []int, active int) []int {
	to := make([]int, len(on))
	share := make([]int, active)
	limit := (len(on) + active - 1) / active
	var unplaced []int
	for i, q := range on {
		if q < active && share[q] < limit {
			share[q]++
			to[i] = q
			continue
		}
		unplaced = append(unplaced, i)
	}
	for _, i := range unplaced {
		q := 0
		for j := range share {
			if share[j] < share[q] {
				q = j
			}
		}
		share[q]++
		to[i] = q
	}
	return to
}

// queue is the queue that owns f now.
func (f *tcpFlow) queue() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.q
}

// move makes queue q the owner of f: its frames go out on q, and q's
// loop serves its host socket. The old loop may still run one handler
// call for the socket (it takes f.mu, as every handler does); a
// deadline asked of the old loop still reaches f (timers run under f.mu
// from any loop). It reports whether f moved.
func (f *tcpFlow) move(q int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.q == q {
		return false
	}
	to := f.t.queues[q].loop
	if f.fd >= 0 {
		// Registered on f.loop since it was adopted (adoptHostLocked
		// and watchHostLocked share one hold of f.mu). Edge-triggered:
		// adding it to the new loop reports what is pending already.
		f.loop.Remove(f.fd)
		if err := to.Add(f.fd, eventloop.Edge, f); err != nil {
			if f.loop.Add(f.fd, eventloop.Edge, f) != nil {
				f.closeLocked(true, true)
			}
			return false
		}
	}
	f.q, f.loop = q, to
	return true
}
