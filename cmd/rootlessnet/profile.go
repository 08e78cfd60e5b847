package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
)

// Hidden debugging aid, documented in docs/benchmarks.md: with
// RLN_CPUPROFILE=path the process writes a pprof CPU profile there when it
// exits normally (SIGINT/SIGTERM included); with RLN_MEMPROFILE=path it
// writes the heap profile (allocs included: go tool pprof -sample_index=
// alloc_space) at the same moment. Environment variables rather than
// flags, so that the slirp4netns command line stays untouched.
// RLN_TRACE=path writes a runtime execution trace (go tool trace,
// -pprof=sched for scheduling delays).
const (
	cpuProfileEnv = "RLN_CPUPROFILE"
	memProfileEnv = "RLN_MEMPROFILE"
	traceEnv      = "RLN_TRACE"
)

// startProfiles starts what the environment asks for and returns the
// function that writes the profiles out.
func startProfiles() func() {
	var stops []func()
	if path := os.Getenv(cpuProfileEnv); path != "" {
		f, err := os.Create(path)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "rootlessnet: %s: %v\n", cpuProfileEnv, err)
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if path := os.Getenv(traceEnv); path != "" {
		f, err := os.Create(path)
		if err == nil {
			err = trace.Start(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "rootlessnet: %s: %v\n", traceEnv, err)
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	if path := os.Getenv(memProfileEnv); path != "" {
		stops = append(stops, func() {
			f, err := os.Create(path)
			if err == nil {
				runtime.GC()
				err = pprof.Lookup("allocs").WriteTo(f, 0)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "rootlessnet: %s: %v\n", memProfileEnv, err)
			}
		})
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}
