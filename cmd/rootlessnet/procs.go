package main

import (
	"os"
	"runtime"
)

// stackProcs is the GOMAXPROCS the stack runs with: half of the Go
// runtime's default (the CPUs, or the cgroup's CPU limit), at least one,
// unless the GOMAXPROCS environment variable sets it.
//
// Why half: every byte the stack relays has a sender and a receiver on
// this same machine (the container's process and a host process), and
// each hand-off between the stack's goroutines that finds an idle P wakes
// another thread, which then competes with those two for the CPUs. On the
// 2-CPU machine of docs/benchmarks.md, one P instead of two measured, in a
// 5-run interleaved A/B: TCP host->ns +30%, published ports +29%, UDP
// +32%, round-trip p50 125 -> 77 µs, connections per second +16%, and 16
// to 32% less CPU per GB.
func stackProcs(runtimeDefault int, env string) int {
	if env != "" {
		return runtimeDefault // the runtime already applied it
	}
	return max(1, runtimeDefault/2)
}

// setStackProcs applies stackProcs to this process.
func setStackProcs() {
	runtime.GOMAXPROCS(stackProcs(runtime.GOMAXPROCS(0), os.Getenv("GOMAXPROCS")))
}
