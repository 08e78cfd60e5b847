package main

// -flows: several flows at once (issue 18): iperf3 -P 1, 4 and 16 both
// ways, and 100 concurrent request/response connections.

import (
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"time"
)

var flowCounts = []int{1, 4, 16}

// procFlows is the number of iperf3 client processes of the -xN rows: the
// flows of -P N come from one iperf3 3.12 thread, which a real workload's
// processes are not.
const procFlows = 4

func procFig(dir string) string { return fmt.Sprintf("flows-%s-x%d", dir, procFlows) }

// rrConns is the number of concurrent request/response connections.
const rrConns = 100

func flowsFig(dir string, n int) string { return fmt.Sprintf("flows-%s-p%d", dir, n) }

func flowsFigures() []modeFigure {
	var figs []modeFigure
	for _, d := range [][2]string{{"out", "ns->host"}, {"in", "host->ns (-R)"}} {
		for _, n := range flowCounts {
			figs = append(figs, modeFigure{id: flowsFig(d[0], n), label: fmt.Sprintf("TCP %s, iperf3 -P %d, aggregate Gbit/s", d[1], n), format: "%.2f", ref: true})
		}
		for _, n := range flowCounts[1:] {
			figs = append(figs, modeFigure{id: flowsFig(d[0], n) + "/p1", label: fmt.Sprintf("TCP %s, -P %d / -P 1 (of the medians)", d[1], n), format: "%.2f", noRatio: true, ref: true})
		}
		figs = append(figs,
			modeFigure{id: procFig(d[0]), label: fmt.Sprintf("TCP %s, %d iperf3 clients at once (a flow each), aggregate Gbit/s", d[1], procFlows), format: "%.2f", ref: true},
			modeFigure{id: procFig(d[0]) + "/p1", label: fmt.Sprintf("TCP %s, %d clients / -P 1 (of the medians)", d[1], procFlows), format: "%.2f", noRatio: true, ref: true})
	}
	return append(figs,
		modeFigure{id: "flows-rr-rate", label: fmt.Sprintf("%d concurrent TCP 64 B request/response ns->host, round trips/s", rrConns), format: "%.0f", ref: true},
		modeFigure{id: "flows-rr-p50", label: fmt.Sprintf("%d concurrent TCP 64 B request/response, p50, µs (lower is better)", rrConns), format: "%.0f", ref: true},
		modeFigure{id: "flows-rr-p99", label: fmt.Sprintf("%d concurrent TCP 64 B request/response, p99, µs (lower is better)", rrConns), format: "%.0f", ref: true},
	)
}

type flowsBench struct {
	cfg *config
	rec *recorder
}

// measureTCP: iperf3 -P N ns->host and host->ns through the gateway to
// the host's server, for every N.
func (fb *flowsBench) measureTCP(s *session) {
	for _, dir := range []string{"out", "in"} {
		for _, n := range flowCounts {
			fig := flowsFig(dir, n)
			if !fb.need(n, dir) {
				continue
			}
			r, err := hostIperfOnce(func(port int) (*iperfResult, error) {
				args := []string{"-c", s.gw, "-p", fmt.Sprint(port), "-t", fmt.Sprint(fb.cfg.secs), "-P", fmt.Sprint(n)}
				if dir == "in" {
					args = append(args, "-R")
				}
				return iperfNS(s.pid, fb.cfg.secs, args...)
			})
			if err != nil {
				fb.rec.fail(s.t.name, fig, err)
				continue
			}
			fb.rec.add(s.t.name, fig, r.End.SumReceived.BitsPerSecond/1e9)
		}
		if fb.cfg.wantAny(procFig(dir), procFig(dir)+"/p1") {
			v, err := clientsAtOnce(procFlows, func(port int) (*iperfResult, error) {
				args := []string{"-c", s.gw, "-p", fmt.Sprint(port), "-t", fmt.Sprint(fb.cfg.secs)}
				if dir == "in" {
					args = append(args, "-R")
				}
				return iperfNS(s.pid, fb.cfg.secs, args...)
			})
			if err != nil {
				fb.rec.fail(s.t.name, procFig(dir), err)
				continue
			}
			fb.rec.add(s.t.name, procFig(dir), v)
		}
	}
}

// clientsAtOnce runs n clients at once, each against a one-off iperf3
// server of its own on the host's 127.0.0.1, and returns their aggregate
// received rate in Gbit/s; any client's failure fails it.
func clientsAtOnce(n int, client func(port int) (*iperfResult, error)) (float64, error) {
	type result struct {
		gbps float64
		err  error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			r, err := hostIperfOnce(client)
			if err != nil {
				results <- result{err: err}
				return
			}
			results <- result{gbps: r.End.SumReceived.BitsPerSecond / 1e9}
		}()
	}
	var sum float64
	var firstErr error
	for range n {
		r := <-results
		if r.err != nil && firstErr == nil {
			firstErr = r.err
		}
		sum += r.gbps
	}
	return sum, firstErr
}

// need: the -P n run of one of dirs is wanted by -figures, for its row or
// for a -P N / -P 1 row.
func (fb *flowsBench) need(n int, dirs ...string) bool {
	for _, dir := range dirs {
		if fb.cfg.wantAny(flowsFig(dir, n), flowsFig(dir, n)+"/p1") {
			return true
		}
		for _, m := range flowCounts[1:] {
			if n == 1 && fb.cfg.want(flowsFig(dir, m)+"/p1") {
				return true
			}
		}
	}
	return false
}

func (fb *flowsBench) addRR(col string, r parallelResult, err error) {
	if err != nil {
		fb.rec.fail(col, "flows-rr-rate, flows-rr-p50, flows-rr-p99", err)
		return
	}
	if r.Err != "" {
		fmt.Fprintf(os.Stderr, "bench: %s: %d connections: a connection failed: %s\n", col, r.Conns, r.Err)
	}
	fb.rec.add(col, "flows-rr-rate", float64(r.RTTs)/r.Seconds)
	fb.rec.add(col, "flows-rr-p50", r.P50us)
	fb.rec.add(col, "flows-rr-p99", r.P99us)
}

// measureRR: the helper in the namespace, rrConns connections through the
// gateway to an echo server of the bench on the host's 127.0.0.1.
func (fb *flowsBench) measureRR(s *session) {
	echo, err := newEchoServer("127.0.0.1:0")
	if err != nil {
		fb.addRR(s.t.name, parallelResult{}, err)
		return
	}
	defer echo.close()
	var r parallelResult
	err = runHelper(s, fb.cfg, time.Duration(fb.cfg.secs)*time.Second+90*time.Second, &r, "rrpar", net.JoinHostPort(s.gw, fmt.Sprint(echo.port())), fmt.Sprint(rrConns), fmt.Sprint(fb.cfg.secs), "64")
	fb.addRR(s.t.name, r, err)
}

// measureLoopback: the reference column, iperf3 client and server (-P N)
// and the helper and echo server, all on the host's 127.0.0.1.
func (fb *flowsBench) measureLoopback() {
	for _, n := range flowCounts {
		if !fb.need(n, "out", "in") {
			continue
		}
		r, err := hostIperfOnce(func(port int) (*iperfResult, error) {
			return iperfHost(fb.cfg.secs, "-c", "127.0.0.1", "-p", fmt.Sprint(port), "-t", fmt.Sprint(fb.cfg.secs), "-P", fmt.Sprint(n))
		})
		for _, dir := range []string{"out", "in"} {
			if err != nil {
				fb.rec.fail(colLoopback, flowsFig(dir, n), err)
				continue
			}
			fb.rec.add(colLoopback, flowsFig(dir, n), r.End.SumReceived.BitsPerSecond/1e9)
		}
	}
	if fb.cfg.wantAny(procFig("out"), procFig("in"), procFig("out")+"/p1", procFig("in")+"/p1") {
		v, err := clientsAtOnce(procFlows, func(port int) (*iperfResult, error) {
			return iperfHost(fb.cfg.secs, "-c", "127.0.0.1", "-p", fmt.Sprint(port), "-t", fmt.Sprint(fb.cfg.secs))
		})
		for _, dir := range []string{"out", "in"} {
			if err != nil {
				fb.rec.fail(colLoopback, procFig(dir), err)
				continue
			}
			fb.rec.add(colLoopback, procFig(dir), v)
		}
	}
	if !fb.cfg.wantAny("flows-rr-rate", "flows-rr-p50", "flows-rr-p99") {
		return
	}
	echo, err := newEchoServer("127.0.0.1:0")
	if err != nil {
		fb.addRR(colLoopback, parallelResult{}, err)
		return
	}
	defer echo.close()
	var r parallelResult
	err = runHostHelper(fb.cfg, time.Duration(fb.cfg.secs)*time.Second+90*time.Second, &r, "rrpar", net.JoinHostPort("127.0.0.1", fmt.Sprint(echo.port())), fmt.Sprint(rrConns), fmt.Sprint(fb.cfg.secs), "64")
	fb.addRR(colLoopback, r, err)
}

// runFlows is the -flows mode.
func runFlows(cfg *config, tools []*tool, runs int, bin string) string {
	fb := &flowsBench{cfg: cfg, rec: &recorder{vals: map[[2]string][]float64{}}}
	var tcpFigs []string
	for _, dir := range []string{"out", "in"} {
		for _, n := range flowCounts {
			tcpFigs = append(tcpFigs, flowsFig(dir, n), flowsFig(dir, n)+"/p1")
		}
		tcpFigs = append(tcpFigs, procFig(dir), procFig(dir)+"/p1")
	}
	steps := []toolStep{
		{name: "flows-tcp", figs: tcpFigs, f: fb.measureTCP},
		{name: "flows-rr", figs: []string{"flows-rr-rate", "flows-rr-p50", "flows-rr-p99"}, f: fb.measureRR},
	}
	desc := fmt.Sprintf("Machine: %s. Tools: %s.", machine(), versions(bin))
	start := time.Now()
	runToolSteps(cfg, tools, runs, []benchStep{{"loopback", fb.measureLoopback}}, steps, fb.rec)
	elapsed := time.Since(start)
	// The -P N / -P 1 rows, from the medians.
	for _, col := range append(toolNames(tools), colLoopback) {
		for _, dir := range []string{"out", "in"} {
			one := fb.rec.median(col, flowsFig(dir, 1))
			for _, n := range flowCounts[1:] {
				if v := fb.rec.median(col, flowsFig(dir, n)); !math.IsNaN(v) && !math.IsNaN(one) && one > 0 {
					fb.rec.add(col, flowsFig(dir, n)+"/p1", v/one)
				}
			}
			if v := fb.rec.median(col, procFig(dir)); !math.IsNaN(v) && !math.IsNaN(one) && one > 0 {
				fb.rec.add(col, procFig(dir)+"/p1", v/one)
			}
		}
	}

	names := toolNames(tools)
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Several flows (%s)\n\nMedian of %d runs, iperf3 -t %d. %s\n\n", time.Now().UTC().Format("2006-01-02"), runs, cfg.secs, desc)
	renderToolTable(&b, fb.rec, cfg, flowsFigures(), names, colLoopback, "host loopback")
	fmt.Fprintf(&b, `
Notes (whole run %.0f s):
- Every tool serves a fresh user+network namespace (unshare -Urn, as uid 65534) at MTU 65520 for each group of rows (the iperf3 rows; the request/response rows) and run; groups and tools are interleaved, each run starting with the next. rootlessnet and slirp4netns are reached at 10.0.2.2, pasta at the namespace's default gateway, which it maps to the host's 127.0.0.1 (its tap path). %s
- TCP: iperf3 -c GATEWAY -P N -t %d in the namespace (nsenter) against a one-off iperf3 -s -1 on the host's 127.0.0.1 (a fresh server per run: a persistent one was still busy with the last -P run's end when the next started), N = 1, 4 and 16 one after the other in the same session; the aggregate received rate (sum_received); host->ns is -R. The -P N / -P 1 rows divide the medians of the rows above, per column. The %[5]d-clients rows: %[5]d iperf3 -c GATEWAY -t %[3]d processes at once (one flow each), each against a one-off server of its own; the aggregate is the sum of their received rates, divided by -P 1's median in the row below it.
- Request/response: the bench's helper in the namespace opens %[4]d TCP connections (TCP_NODELAY) through the gateway to an echo server of the bench on the host's 127.0.0.1, each makes 10 warm-up round trips, then all make 64 B round trips, one outstanding per connection, for %[3]d s; the rate is the round trips completed over that time, p50/p99 over all of them.
- host loopback (the reference column): iperf3 -P N with client and server both on the host's 127.0.0.1 (the same run in both directions' rows), and the helper as uid 65534 on the host against the echo server.
- Ratios are rootlessnet/peer of the medians (none for the -P N / -P 1 rows); for "lower is better" rows a ratio below 1 favours rootlessnet. n/a: the figure failed (reason on stderr). -figures takes flows-{out,in}-p{1,4,16}, flows-{out,in}-p{4,16}/p1, flows-{out,in}-x4 and flows-{out,in}-x4/p1, flows-rr-rate, flows-rr-p50, flows-rr-p99, or patterns ('flows-out-*').
`, elapsed.Seconds(), toolsNote(names), cfg.secs, rrConns, procFlows)
	return b.String()
}
