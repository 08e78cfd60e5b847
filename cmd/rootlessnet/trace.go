package main

import (
	"log/slog"
	"os"
	"strconv"
	"time"
)

// t0Env carries run's start time across the sandbox's re-execution, which
// keeps the process but starts the program again.
const t0Env = "_ROOTLESSNET_T0"

// startTrace times run's start-up phases, logged at debug level once the
// command runs: where a CI runner's thousands of short jobs spend their
// start.
type startTrace struct {
	log      *slog.Logger
	t0, last time.Time
	phases   []any
}

func newStartTrace(log *slog.Logger) *startTrace {
	now := time.Now()
	t0 := now
	if ns, err := strconv.ParseInt(os.Getenv(t0Env), 10, 64); err == nil && ns > 0 && ns <= now.UnixNano() {
		t0 = time.Unix(0, ns)
	} else {
		os.Setenv(t0Env, strconv.FormatInt(now.UnixNano(), 10))
	}
	return &startTrace{log: log, t0: t0, last: t0}
}

// forget keeps the start time out of the environment CMD inherits.
func (s *startTrace) forget() { os.Unsetenv(t0Env) }

// phase ends a phase named name.
func (s *startTrace) phase(name string) {
	now := time.Now()
	s.phases = append(s.phases, name, now.Sub(s.last).Round(10*time.Microsecond))
	s.last = now
}

// done logs the phases and the total.
func (s *startTrace) done() {
	s.log.Debug("start-up", append(s.phases, "total", time.Since(s.t0).Round(10*time.Microsecond))...)
}
