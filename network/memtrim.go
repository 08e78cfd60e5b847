package network

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// After a burst of traffic the heap it left behind stays resident until
// the runtime's periodic GC and its gradual scavenger get to it, minutes
// later; a stack that podman leaves running for weeks should shrink back
// as soon as the burst is over. trimIdle watches the allocation rate and,
// in the quiet intervals that follow a busy one, returns the free memory
// to the OS at once: over two minutes, so that what the flows that idle
// out meanwhile (UDP, 90 s) held goes back too. It costs nothing while
// traffic flows.
const (
	trimInterval = 30 * time.Second
	// quietAllocs is the most allocated in one interval that still counts
	// as quiet; busyAllocs the least that counts as a burst.
	quietAllocs = 4 << 20
	busyAllocs  = 64 << 20
	// quietTrims is how many quiet intervals after a burst trim.
	quietTrims = 4
)

// trimIdle runs until stop is closed, then closes done.
func trimIdle(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	tick := time.NewTicker(trimInterval)
	defer tick.Stop()
	last, sinceBurst, pending := read(), uint64(0), 0
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		now := read()
		delta := now - last
		last = now
		sinceBurst += delta
		if sinceBurst >= busyAllocs {
			pending, sinceBurst = quietTrims, 0
		}
		if delta <= quietAllocs && pending > 0 {
			debug.FreeOSMemory()
			pending--
		}
	}
}
