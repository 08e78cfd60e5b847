package eventloop

import (
	"testing"
	"time"
)

func TestNextSpin(t *testing.T) {
	const us = time.Microsecond
	for _, c := range []struct {
		name                         string
		limit, waited, ceiling, want time.Duration
	}{
		{"off", 0, 10 * us, 0, 0},
		{"off, window left", 20 * us, 10 * us, 0, 0},
		{"shut, event within reach opens", 0, 10 * us, 80 * us, 10 * us},
		{"caught: kept", 20 * us, 15 * us, 80 * us, 20 * us},
		{"caught at the edge: kept", 20 * us, 20 * us, 80 * us, 20 * us},
		{"missed within reach: doubles", 20 * us, 30 * us, 80 * us, 40 * us},
		{"doubling stops at the ceiling", 50 * us, 70 * us, 80 * us, 80 * us},
		{"at the ceiling, caught", 80 * us, 79 * us, 80 * us, 80 * us},
		{"beyond reach: halves", 80 * us, 200 * us, 80 * us, 40 * us},
		{"beyond reach: below the start shuts", 15 * us, 200 * us, 80 * us, 0},
		{"shut stays shut", 0, time.Second, 80 * us, 0},
		{"just past the ceiling halves", 40 * us, 81 * us, 80 * us, 20 * us},
	} {
		if got := nextSpin(c.limit, c.waited, c.ceiling); got != c.want {
			t.Errorf("%s: nextSpin(%v, %v, %v) = %v, want %v", c.name, c.limit, c.waited, c.ceiling, got, c.want)
		}
	}
}
