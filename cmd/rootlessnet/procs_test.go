package main

import "testing"

func TestStackProcs(t *testing.T) {
	for _, tc := range []struct {
		def  int
		env  string
		fast bool
		want int
	}{
		{1, "", false, 1},
		{2, "", false, 1},
		{3, "", false, 1},
		{4, "", false, 2},
		{16, "", false, 8},
		{2, "2", false, 2}, // GOMAXPROCS=2 set by the user: kept
		{8, "8", false, 8},
		{1, "", true, 1}, // one CPU: one P, the loop waits through Go
		{2, "", true, 2},
		{3, "", true, 2},
		{4, "", true, 2},
		{16, "", true, 8},
		{4, "1", true, 4}, // the runtime applied the user's value
	} {
		if got := stackProcs(tc.def, tc.env, tc.fast); got != tc.want {
			t.Errorf("stackProcs(%d, %q, %v) = %d, want %d", tc.def, tc.env, tc.fast, got, tc.want)
		}
	}
}
