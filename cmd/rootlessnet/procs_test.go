package main

import "testing"

func TestStackProcs(t *testing.T) {
	for _, tc := range []struct {
		def    int
		env    string
		fast   bool
		queues int
		want   int
	}{
		{1, "", false, 1, 1},
		{2, "", false, 1, 1},
		{3, "", false, 1, 1},
		{4, "", false, 1, 2},
		{16, "", false, 1, 8},
		{2, "2", false, 1, 2}, // GOMAXPROCS=2 set by the user: kept
		{8, "8", false, 1, 8},
		{1, "", true, 1, 1}, // one CPU: one P, the loop waits through Go
		{2, "", true, 1, 2},
		{3, "", true, 1, 2},
		{4, "", true, 1, 2},
		{16, "", true, 1, 8},
		{4, "1", true, 1, 4}, // the runtime applied the user's value
		// A P per queue's loop and one more, at most the CPUs.
		{2, "", true, 2, 2},
		{2, "", true, 4, 2},
		{1, "", true, 2, 1},
		{4, "", true, 2, 3},
		{4, "", true, 4, 4},
		{8, "", true, 4, 5},
		{16, "", true, 4, 8},
		{16, "", false, 4, 8}, // no fast path: queues change nothing
		{2, "2", true, 2, 2},
	} {
		if got := stackProcs(tc.def, tc.env, tc.fast, tc.queues); got != tc.want {
			t.Errorf("stackProcs(%d, %q, %v, %d) = %d, want %d", tc.def, tc.env, tc.fast, tc.queues, got, tc.want)
		}
	}
}
