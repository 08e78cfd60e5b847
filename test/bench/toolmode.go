package main

// What -udp, -dns and -flows share: steps measured in a fresh session of
// every tool, interleaved, and a table of medians with the ratios of
// rootlessnet to each peer and to a reference column.

import (
	"fmt"
	"math"
	"os"
	"strings"
	"time"
)

// toolStep is a group of figures measured in one fresh session of each
// tool.
type toolStep struct {
	name string
	figs []string // the ids it records: -figures selects, a failed start fails them all
	opts sessionOpts
	f    func(s *session)
}

// runToolSteps runs rounds: each round first the refs (the reference
// column, no tool), then every step selected by -figures with every tool,
// each round starting with the next step, each step with the next tool.
func runToolSteps(cfg *config, tools []*tool, runs int, refs []benchStep, steps []toolStep, rec *recorder) {
	var sel []toolStep
	for _, st := range steps {
		if cfg.wantAny(st.figs...) {
			sel = append(sel, st)
		}
	}
	for r := 0; r < runs; r++ {
		for _, ref := range refs {
			if stopping.Load() {
				select {} // the signal handler exits
			}
			t0 := time.Now()
			ref.f()
			if verbose {
				fmt.Fprintf(os.Stderr, "bench: run %d/%d, %s: %.1f s\n", r+1, runs, ref.name, time.Since(t0).Seconds())
			}
		}
		for i := range sel {
			st := sel[(i+r)%len(sel)]
			for j := range tools {
				if stopping.Load() {
					select {}
				}
				t := tools[(i+j+r)%len(tools)]
				t0 := time.Now()
				s, done, err := openSession(cfg, t, st.name, st.opts)
				if err != nil {
					rec.fail(t.name, strings.Join(st.figs, ", "), err)
					continue
				}
				st.f(s)
				done()
				if verbose {
					fmt.Fprintf(os.Stderr, "bench: run %d/%d, %s, %s: %.1f s\n", r+1, runs, t.name, st.name, time.Since(t0).Seconds())
				}
			}
		}
	}
}

// modeFigure is a row of a tool mode's table.
type modeFigure struct {
	id, label, format string
	// noRatio: no ratio columns (losses, counts).
	noRatio bool
	// ref: the reference column has this figure (else it stays empty).
	ref bool
}

// renderToolTable writes the table: one column per tool, then refLabel's
// (the recorder's column ref; none when ""), then rootlessnet/peer and
// rootlessnet/ref.
func renderToolTable(b *strings.Builder, rec *recorder, cfg *config, figs []modeFigure, names []string, ref, refLabel string) {
	peers := names[1:]
	fmt.Fprintf(b, "| figure | %s |", strings.Join(names, " | "))
	n := len(names) + len(peers)
	if ref != "" {
		fmt.Fprintf(b, " %s |", refLabel)
		n++
	}
	for _, p := range peers {
		fmt.Fprintf(b, " rootlessnet/%s |", p)
	}
	if ref != "" {
		fmt.Fprintf(b, " rootlessnet/%s |", ref)
		n++
	}
	fmt.Fprintf(b, "\n|---|%s\n", strings.Repeat("---|", n))
	for _, f := range figs {
		if !cfg.want(f.id) {
			continue
		}
		v := map[string]float64{}
		fmt.Fprintf(b, "| %s |", f.label)
		for _, name := range names {
			v[name] = rec.median(name, f.id)
			fmt.Fprintf(b, " %s |", fmtVal(f.format, v[name]))
		}
		refV := math.NaN()
		if ref != "" {
			cell := ""
			if f.ref {
				refV = rec.median(ref, f.id)
				cell = fmtVal(f.format, refV)
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		for _, p := range peers {
			cell := ""
			if !f.noRatio {
				cell = ratio(v["rootlessnet"], v[p])
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		if ref != "" {
			cell := ""
			if f.ref && !f.noRatio {
				cell = ratio(v["rootlessnet"], refV)
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		b.WriteString("\n")
	}
}

// toolsNote says which binary each pasta column is.
func toolsNote(names []string) string {
	var parts []string
	for _, n := range names {
		switch n {
		case "pasta":
			parts = append(parts, "pasta is Debian 12's passt 2023-03-09 ("+pastaBin+")")
		case "pasta-2025":
			parts = append(parts, "pasta-2025 is passt 2025-05-03, Debian 13's, built by pasta-2025.sh ("+pasta2025Bin+"), run with the same options")
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, "; ") + "."
}
