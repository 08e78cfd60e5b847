package fastpath

import (
	"slices"
	"testing"
)

func TestPlaceBusy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		on     []int
		active int
		want   []int
	}{
		{"none", nil, 2, []int{}},
		{"one flow stays", []int{1}, 2, []int{1}},
		{"one flow off a detached queue", []int{1}, 1, []int{0}},
		{"two on one queue: the second moves", []int{0, 0}, 2, []int{0, 1}},
		{"four on one queue: two move", []int{0, 0, 0, 0}, 2, []int{0, 0, 1, 1}},
		{"already even: nobody moves", []int{1, 0, 1, 0}, 2, []int{1, 0, 1, 0}},
		{"odd count: one queue takes one more", []int{0, 0, 0}, 2, []int{0, 0, 1}},
		{"all back to one queue", []int{0, 1, 1, 0}, 1, []int{0, 0, 0, 0}},
		{"three queues, a detached one emptied", []int{3, 3, 0, 1, 2, 0}, 3, []int{1, 2, 0, 1, 2, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := placeBusy(tc.on, tc.active)
			if !slices.Equal(got, tc.want) {
				t.Errorf("placeBusy(%v, %d) = %v, want %v", tc.on, tc.active, got, tc.want)
			}
			// Whatever the placement, it is even and within active.
			count := make([]int, tc.active)
			for _, q := range got {
				if q < 0 || q >= tc.active {
					t.Fatalf("flow placed on queue %d of %d", q, tc.active)
				}
				count[q]++
			}
			if len(got) > 0 && slices.Max(count)-slices.Min(count) > 1 {
				t.Errorf("uneven: %v per queue", count)
			}
		})
	}
}
