package main

import "testing"

func TestStackProcs(t *testing.T) {
	for _, tc := range []struct {
		def  int
		env  string
		want int
	}{
		{1, "", 1},
		{2, "", 1},
		{3, "", 1},
		{4, "", 2},
		{16, "", 8},
		{2, "2", 2}, // GOMAXPROCS=2 set by the user: kept
		{8, "8", 8},
	} {
		if got := stackProcs(tc.def, tc.env); got != tc.want {
			t.Errorf("stackProcs(%d, %q) = %d, want %d", tc.def, tc.env, got, tc.want)
		}
	}
}
