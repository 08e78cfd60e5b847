package main

// -startup: how long each tool takes to give a namespace its network
// (issue 18): a CI runner starts thousands of short jobs.

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// startupCase is one way to start, timed from the first exec to the point
// where a command in the namespace could use the network.
type startupCase struct {
	name string
	run  func(bin string) (time.Duration, error)
}

var allStartupCases = []startupCase{
	{"rootlessnet run -- true", func(bin string) (time.Duration, error) {
		return timeCmd(unprivileged(exec.Command(bin, "run", "--", "true")))
	}},
	{"rootlessnet run --enable-sandbox=false --enable-seccomp=false -- true", func(bin string) (time.Duration, error) {
		return timeCmd(unprivileged(exec.Command(bin, "run", "--enable-sandbox=false", "--enable-seccomp=false", "--", "true")))
	}},
	{"rootlessnet run --enable-sandbox=false -- true (seccomp on)", func(bin string) (time.Duration, error) {
		return timeCmd(unprivileged(exec.Command(bin, "run", "--enable-sandbox=false", "--", "true")))
	}},
	{"pasta --config-net -- true", func(string) (time.Duration, error) {
		return timeCmd(unprivileged(exec.Command(pastaBin, "--config-net", "-q", "--", "true")))
	}},
	{"pasta-2025 --config-net -- true", func(string) (time.Duration, error) {
		return timeCmd(unprivileged(exec.Command(pasta2025Bin, "--config-net", "-q", "--", "true")))
	}},
	{"unshare -Urn, then slirp4netns -c until its ready fd", func(string) (time.Duration, error) {
		t0 := time.Now()
		ns, err := startNamespace()
		if err != nil {
			return 0, err
		}
		defer ns.stop(time.Second)
		p, err := startReadyFD(unprivileged(exec.Command("slirp4netns", "--configure", "--ready-fd=3", fmt.Sprint(ns.pid()), "tap0")), 15*time.Second)
		if err != nil {
			return 0, err
		}
		d := time.Since(t0)
		p.stop(time.Second)
		return d, nil
	}},
	{"unshare -Urn, then rootlessnet --netns until it serves", func(bin string) (time.Duration, error) {
		t0 := time.Now()
		ns, err := startNamespace()
		if err != nil {
			return 0, err
		}
		defer ns.stop(time.Second)
		p, _, err := startWithLine(unprivileged(exec.Command(bin, "--netns", fmt.Sprintf("/proc/%d/ns/net", ns.pid()), "--log-level", "error")), "serving", 15*time.Second)
		if err != nil {
			return 0, err
		}
		d := time.Since(t0)
		p.stop(time.Second)
		return d, nil
	}},
}

// timeCmd runs c to its end and returns its wall time.
func timeCmd(c *exec.Cmd) (time.Duration, error) {
	var stderr tailBuffer
	c.Stderr = &stderr
	t0 := time.Now()
	err := c.Run()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, stderr.tail())
	}
	return d, nil
}

// runStartup times every case runs times, interleaved, and renders the
// medians and 90th percentiles with the phases rootlessnet logs at debug
// level (the median of each).
func runStartup(bin string, runs int) string {
	var startupCases []startupCase
	for _, c := range allStartupCases {
		// pasta-2025's row only where it is installed.
		if _, err := os.Stat(pasta2025Bin); err != nil && strings.HasPrefix(c.name, "pasta-2025") {
			continue
		}
		startupCases = append(startupCases, c)
	}
	times := map[string][]float64{}
	for r := 0; r < runs; r++ {
		for i := range startupCases {
			if stopping.Load() {
				select {} // the signal handler exits
			}
			c := startupCases[(i+r)%len(startupCases)]
			d, err := c.run(bin)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: startup: %s: %v\n", c.name, err)
				continue
			}
			times[c.name] = append(times[c.name], float64(d.Microseconds())/1000)
		}
	}
	phases := startupPhases(bin, runs)
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Start-up (%s)\n\n%d runs of each, interleaved, as uid 65534. Machine: %s. Tools: %s.\n\n",
		time.Now().UTC().Format("2006-01-02"), runs, machine(), versions(bin))
	b.WriteString("| start | median, ms | p90, ms |\n|---|---|---|\n")
	for _, c := range startupCases {
		v := times[c.name]
		fmt.Fprintf(&b, "| %s | %s | %s |\n", c.name, fmtVal("%.1f", median(v)), fmtVal("%.1f", percentile(v, 0.9)))
	}
	pastas := []string{"pasta"}
	if _, err := os.Stat(pasta2025Bin); err == nil {
		pastas = append(pastas, "pasta-2025")
	}
	if n := toolsNote(pastas); n != "" {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	if phases != "" {
		fmt.Fprintf(&b, "\nWhere rootlessnet run's time goes (--log-level debug's start-up line, medians): %s. The program phase starts once the Go runtime and main run, and the total ends when CMD runs: the wall time adds the runtime's start, CMD itself, and the shut-down (mostly the kernel's RCU grace period in closing the TAP's queue).\n", phases)
	}
	return b.String()
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[int(math.Ceil(p*float64(len(s))))-1]
}

// startupPhases runs rootlessnet run --log-level debug -- true and takes
// the median of each phase its start-up line names.
func startupPhases(bin string, runs int) string {
	vals := map[string][]float64{}
	var order []string
	for r := 0; r < runs; r++ {
		out, err := exec.Command("sh", "-c", "exec \"$0\" run --log-level debug -- true 2>&1", bin).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			shutdown := strings.Contains(line, `msg="shut down"`)
			if !strings.Contains(line, "msg=start-up") && !shutdown {
				continue
			}
			for _, f := range strings.Fields(line) {
				k, v, ok := strings.Cut(f, "=")
				if !ok || k == "time" || k == "level" || k == "msg" {
					continue
				}
				if shutdown {
					if k != "took" {
						continue
					}
					k = "shut-down"
				}
				d, err := time.ParseDuration(v)
				if err != nil {
					continue
				}
				if _, seen := vals[k]; !seen {
					order = append(order, k)
				}
				vals[k] = append(vals[k], float64(d.Microseconds())/1000)
			}
		}
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s %.1f ms", k, median(vals[k])))
	}
	return strings.Join(parts, ", ")
}
