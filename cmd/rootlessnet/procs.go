package main

import (
	"os"
	"runtime"
)

// stackProcs is the GOMAXPROCS the stack runs with, unless the
// GOMAXPROCS environment variable sets it.
//
// With the netstack carrying TCP (no fast path): half of the Go runtime's
// default (the CPUs, or the cgroup's CPU limit), at least one. Every byte
// the stack relays has a sender and a receiver on this same machine (the
// container's process and a host process), and each hand-off between the
// stack's goroutines that finds an idle P wakes another thread, which then
// competes with those two for the CPUs. On the 2-CPU machine of
// docs/benchmarks.md, one P instead of two measured, in a 5-run
// interleaved A/B: TCP host->ns +30%, published ports +29%, UDP +32%,
// round-trip p50 125 -> 77 µs, connections per second +16%, and 16 to 32%
// less CPU per GB.
//
// With the TCP fast path: at least two where the runtime has two. Its
// event loop keeps a P while traffic flows (stack/eventloop/loop_linux.go), and
// the other P serves the rest: the API socket, published ports' listeners,
// UDP relays, timers. With one P the loop either starved those (an API
// request waited 10 ms behind a bulk transfer) or had to wait through the
// Go scheduler on every event (round trip p50 38-44 µs instead of 36-37).
//
// With a multi-queue TAP (queues > 1) and the fast path: a P per queue's
// loop, each of which holds one while its traffic flows, and one more for
// the rest, as with one queue; but no more Ps than CPUs. On the 2-CPU VM
// a third P (GOMAXPROCS 3 for two queues) took the p99 of 100 concurrent
// request/response connections from about 10 to 29 ms (docs/benchmarks.md,
// "Several flows with a multi-queue TAP"): one more thread competing with
// the flows' own processes for the CPUs.
func stackProcs(runtimeDefault int, env string, fastPath bool, queues int) int {
	if env != "" {
		return runtimeDefault // the runtime already applied it
	}
	half := max(1, runtimeDefault/2)
	if !fastPath {
		return half
	}
	procs := max(half, min(2, runtimeDefault))
	if queues > 1 {
		procs = max(procs, min(queues+1, runtimeDefault))
	}
	return procs
}

// setStackProcs applies stackProcs to this process, whose TAP has queues
// queues.
func setStackProcs(fastPath bool, queues int) {
	runtime.GOMAXPROCS(stackProcs(runtimeProcs, os.Getenv("GOMAXPROCS"), fastPath, queues))
}

// runtimeProcs is the runtime's own GOMAXPROCS, before setStackProcs.
var runtimeProcs = runtime.GOMAXPROCS(0)
