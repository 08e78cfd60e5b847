package network

import "time"

// With AutoQueues, a multi-queue TAP keeps only its first queue attached
// while at most one TCP flow is busy, and attaches a queue per busy flow
// (up to all of them) while several are: two attached queues made the
// kernel hash every frame to steer it, which cost a single flow about a
// tenth of its rate in some A/Bs, while four flows gained a quarter or
// more (docs/benchmarks.md, "Several flows").
const (
	// queueSample is how often the flows' traffic is sampled.
	queueSample = 100 * time.Millisecond
	// busyFlowBytes makes a flow busy: about 84 Mbit/s over a sample.
	busyFlowBytes = 1 << 20
	// calmSamples is how long fewer busy flows must last before queues
	// are detached (detaching drops what the kernel queued on them).
	calmSamples = 10
)

// governQueues samples the fast path's flows and sets the attached
// queues, until stop is closed. It owns the link's active queue count.
func (n *Network) governQueues(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(queueSample)
	defer tick.Stop()
	queues := n.Link.Queues()
	active, calm := n.Link.ActiveQueues(), 0
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		load := n.Fast.SampleLoad(busyFlowBytes)
		want := max(1, min(load.Busy(), queues))
		switch {
		case want > active:
			calm = 0
			if err := n.Link.SetActiveQueues(want); err != nil {
				// Seccomp without TUNSETQUEUE, or a TAP we may not
				// attach to: stay as we are, for good.
				n.cfg.Log.Warn("attaching TAP queues failed: the flows stay on the attached ones", "err", err)
				return
			}
			active = want
			moved := n.Fast.Spread(load, active)
			n.cfg.Log.Debug("TAP queues attached", "active", want, "busy flows", load.Busy(), "moved", moved)
		case want < active && calm+1 >= calmSamples:
			calm = 0
			moved := n.Fast.Spread(load, want) // off the queues before they go
			if err := n.Link.SetActiveQueues(want); err != nil {
				n.cfg.Log.Warn("detaching TAP queues failed", "err", err)
				return
			}
			n.cfg.Log.Debug("TAP queues detached", "active", want, "busy flows", load.Busy(), "moved", moved)
			active = want
		case want < active:
			calm++
			n.Fast.Spread(load, active)
		default:
			calm = 0
			n.Fast.Spread(load, active)
		}
	}
}
