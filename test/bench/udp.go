package main

// -udp: UDP figures of issue 18, for datagrams of 64, 1400 and 8000
// bytes on four paths (to the host's 127.0.0.1 through the gateway and
// back, and through a published UDP port both ways): the received rate
// and loss of an unlimited sender, the highest rate a sender can offer
// with at most 1% loss, and 64 B request/response latency.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

var udpSizes = []int{64, 1400, 8000}

// udpPath is one way through a tool.
type udpPath struct {
	id, label string
	pub       bool // through the published port (else the gateway)
	reverse   bool // iperf3 -R
}

var udpPaths = []udpPath{
	{"out", "ns->host", false, false},
	{"in", "host->ns (-R)", false, true},
	{"pub-in", "published port host->ns", true, false},
	{"pub-out", "published port ns->host (-R)", true, true},
}

// udpMaxLoss is the loss, in %, the highest rate may have.
const udpMaxLoss = 1.0

func udpFig(p udpPath, size int, what string) string {
	id := fmt.Sprintf("udp-%s-%d", p.id, size)
	if what != "" {
		id += "-" + what
	}
	return id
}

func udpFigures() []modeFigure {
	var figs []modeFigure
	for _, p := range udpPaths {
		for _, size := range udpSizes {
			f := "%.2f"
			if size == 64 {
				f = "%.3f"
			}
			ref := p.id == "out"
			figs = append(figs,
				modeFigure{id: udpFig(p, size, ""), label: fmt.Sprintf("%s %d B, unlimited sender: received, Gbit/s", p.label, size), format: f, ref: ref},
				modeFigure{id: udpFig(p, size, "loss"), label: fmt.Sprintf("%s %d B, unlimited sender: loss, %% (lower is better)", p.label, size), format: "%.1f", noRatio: true, ref: ref},
				modeFigure{id: udpFig(p, size, "max"), label: fmt.Sprintf("%s %d B, highest offered rate with ≤1%% loss, Gbit/s", p.label, size), format: f, ref: ref},
			)
		}
	}
	return append(figs,
		modeFigure{id: "udp-lat-p50", label: "UDP 64 B request/response ns->host p50, µs (lower is better)", format: "%.0f", ref: true},
		modeFigure{id: "udp-lat-p99", label: "UDP 64 B request/response ns->host p99, µs (lower is better)", format: "%.0f", ref: true},
	)
}

// udpBench holds -udp's settings.
type udpBench struct {
	cfg     *config
	rec     *recorder
	steps   int // search runs per figure at most
	searchT int // seconds per search run
	// window: iperf3 -w of every run (both ends' socket buffers), ""
	// for iperf3's default.
	window string
}

// udpArgs are the iperf3 -u flags of a run.
func (ub *udpBench) udpArgs(size int, rate float64, secs int) []string {
	args := []string{"-u", "-b", fmt.Sprintf("%.0f", rate), "-l", fmt.Sprint(size), "-t", fmt.Sprint(secs)}
	if ub.window != "" {
		args = append(args, "-w", ub.window)
	}
	return args
}

// iperfOnce runs a one-off iperf3 server (srv, which must print
// "listening") and then client; the server ends with the test (a fresh
// one per run: a test that ends badly cannot leave it busy).
func iperfOnce(srv *exec.Cmd, client func() (*iperfResult, error)) (*iperfResult, error) {
	stderr := &tailBuffer{}
	srv.Stderr = stderr
	p, _, err := startWithLine(srv, "listening", 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("iperf3 server: %v: %s", err, stderr.tail())
	}
	defer p.stop(time.Second)
	return client()
}

// hostIperfOnce runs client against a one-off iperf3 server on the host's
// 127.0.0.1, on a free port.
func hostIperfOnce(client func(port int) (*iperfResult, error)) (*iperfResult, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	srv := exec.Command("iperf3", "-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p", fmt.Sprint(port))
	return iperfOnce(srv, func() (*iperfResult, error) { return client(port) })
}

// udpTimeout bounds an iperf3 -u run of secs: a UDP test whose
// datagrams do not get through (iperf3 waits for its UDP connect reply
// without a timeout of its own) ends sooner than the TCP figures' secs+20.
func udpTimeout(secs int) time.Duration { return time.Duration(secs+10) * time.Second }

// udpRun is one iperf3 -u run of p at size bytes, -b rate (0: unlimited),
// secs long.
func (ub *udpBench) udpRun(s *session, p udpPath, size int, rate float64, secs int) (*iperfResult, error) {
	args := ub.udpArgs(size, rate, secs)
	if p.reverse {
		args = append(args, "-R")
	}
	var r *iperfResult
	var err error
	if p.pub {
		srv := exec.Command("nsenter", nsenterArgs(s.pid, "iperf3", "-s", "-1", "--forceflush", "-p", fmt.Sprint(guestPort))...)
		r, err = iperfOnce(srv, func() (*iperfResult, error) {
			return iperfHostWithin(udpTimeout(secs), append([]string{"-c", "127.0.0.1", "-p", fmt.Sprint(s.hostPort)}, args...)...)
		})
	} else {
		r, err = hostIperfOnce(func(port int) (*iperfResult, error) {
			return iperfNSWithin(s.pid, udpTimeout(secs), append([]string{"-c", s.gw, "-p", fmt.Sprint(port)}, args...)...)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("iperf3 %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}

// loopbackRun is the same run with client and server on the host's
// 127.0.0.1 (the reference column).
func (ub *udpBench) loopbackRun(size int, rate float64, secs int) (*iperfResult, error) {
	return hostIperfOnce(func(port int) (*iperfResult, error) {
		return iperfHostWithin(udpTimeout(secs), append([]string{"-c", "127.0.0.1", "-p", fmt.Sprint(port)}, ub.udpArgs(size, rate, secs)...)...)
	})
}

// measureSize records the three figures of one path and size for col:
// an unlimited run of -t seconds, then the search.
func (ub *udpBench) measureSize(col string, p udpPath, size int, run func(rate float64, secs int) (*iperfResult, error)) {
	rateID, lossID, maxID := udpFig(p, size, ""), udpFig(p, size, "loss"), udpFig(p, size, "max")
	if !ub.cfg.wantAny(rateID, lossID, maxID) {
		return
	}
	r, err := run(0, ub.cfg.secs)
	if err != nil {
		ub.rec.fail(col, strings.Join([]string{rateID, lossID, maxID}, ", "), err)
		return
	}
	recv, sent, loss := r.End.SumReceived.BitsPerSecond/1e9, r.End.SumSent.BitsPerSecond/1e9, r.End.SumReceived.LostPercent
	ub.rec.add(col, rateID, recv)
	ub.rec.add(col, lossID, loss)
	if !ub.cfg.want(maxID) {
		return
	}
	best, tries, err := ub.search(recv, sent, loss, run)
	if verbose {
		fmt.Fprintf(os.Stderr, "bench: %s: %s: %d search runs\n", col, maxID, tries)
	}
	if err != nil {
		ub.rec.fail(col, maxID, err)
		return
	}
	ub.rec.add(col, maxID, best)
}

// search finds the highest rate (Gbit/s) a sender offers with at most
// udpMaxLoss % loss, from an unlimited run's received and sent rates
// and loss: if that run lost no more, its sent rate is the answer (the
// sender is the limit); else at most ub.steps runs of ub.searchT seconds
// with -b, the first at the unlimited run's received rate, each next
// halfway between the highest passing and the lowest failing -b (halving
// while none has passed). A rate is the sender's own measure of what it
// sent at that -b, which can fall short of -b.
func (ub *udpBench) search(recv, sent, loss float64, run func(rate float64, secs int) (*iperfResult, error)) (float64, int, error) {
	if loss <= udpMaxLoss {
		return sent, 0, nil
	}
	var best, passB float64     // the best passing sent rate and its -b, Gbit/s
	failB := sent               // the lowest failing -b
	b := min(recv, sent) * 0.99 // below the failing unlimited rate
	tries := 0
	for ; tries < ub.steps; tries++ {
		if b <= 0 {
			break
		}
		r, err := run(b*1e9, ub.searchT)
		if err != nil {
			return 0, tries + 1, fmt.Errorf("search run at -b %.3f Gbit/s: %w", b, err)
		}
		if r.End.SumReceived.LostPercent <= udpMaxLoss {
			best = max(best, r.End.SumSent.BitsPerSecond/1e9)
			passB = b
		} else {
			failB = b
		}
		if passB == 0 {
			b /= 2
		} else {
			b = (passB + failB) / 2
		}
	}
	if best == 0 {
		return 0, tries, fmt.Errorf("no -b down to %.4f Gbit/s kept the loss at %.0f%% or less in %d runs", b*2, udpMaxLoss, tries)
	}
	return best, tries, nil
}

// measurePaths measures every size of the paths ps in session s.
func (ub *udpBench) measurePaths(s *session, ps ...udpPath) {
	for _, p := range ps {
		for _, size := range udpSizes {
			ub.measureSize(s.t.name, p, size, func(rate float64, secs int) (*iperfResult, error) {
				return ub.udpRun(s, p, size, rate, secs)
			})
		}
	}
}

// measureLatency: the helper in the namespace makes cfg.rtts UDP round
// trips of 64 B to a UDP echo server of the bench on the host's
// 127.0.0.1, through the gateway.
func (ub *udpBench) measureLatency(s *session) {
	echo, err := newUDPEcho()
	if err != nil {
		ub.rec.fail(s.t.name, "udp-lat-p50, udp-lat-p99", err)
		return
	}
	defer echo.close()
	var r udpLatencyResult
	if err := runHelper(s, ub.cfg, 90*time.Second, &r, "udplatency", net.JoinHostPort(s.gw, fmt.Sprint(echo.port())), fmt.Sprint(ub.cfg.rtts), "64"); err != nil {
		ub.rec.fail(s.t.name, "udp-lat-p50, udp-lat-p99", err)
		return
	}
	ub.addLatency(s.t.name, r)
}

func (ub *udpBench) addLatency(col string, r udpLatencyResult) {
	if r.Lost > 0 {
		fmt.Fprintf(os.Stderr, "bench: %s: UDP latency: %d of %d datagrams unanswered within 500 ms (not in the percentiles)\n", col, r.Lost, r.N+r.Lost)
	}
	ub.rec.add(col, "udp-lat-p50", r.P50us)
	ub.rec.add(col, "udp-lat-p99", r.P99us)
}

// measureLoopback: the reference column, client and server on the host's
// 127.0.0.1 (the ns->host rows and latency).
func (ub *udpBench) measureLoopback() {
	for _, size := range udpSizes {
		ub.measureSize(colLoopback, udpPaths[0], size, func(rate float64, secs int) (*iperfResult, error) {
			return ub.loopbackRun(size, rate, secs)
		})
	}
	if !ub.cfg.wantAny("udp-lat-p50", "udp-lat-p99") {
		return
	}
	echo, err := newUDPEcho()
	if err != nil {
		ub.rec.fail(colLoopback, "udp-lat-p50, udp-lat-p99", err)
		return
	}
	defer echo.close()
	var r udpLatencyResult
	if err := runHostHelper(ub.cfg, 90*time.Second, &r, "udplatency", net.JoinHostPort("127.0.0.1", fmt.Sprint(echo.port())), fmt.Sprint(ub.cfg.rtts), "64"); err != nil {
		ub.rec.fail(colLoopback, "udp-lat-p50, udp-lat-p99", err)
		return
	}
	ub.addLatency(colLoopback, r)
}

// runHostHelper runs the helper on the host (as uid 65534 when root),
// outside any namespace of a tool: the reference columns.
func runHostHelper(cfg *config, timeout time.Duration, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := unprivileged(exec.CommandContext(ctx, cfg.helper, args...))
	if c.Env == nil {
		c.Env = os.Environ()
	}
	c.Env = append(c.Env, helperEnv+"=1")
	out, err := runOutput(ctx, c)
	if err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

func udpStepFigs(ps ...udpPath) []string {
	var ids []string
	for _, p := range ps {
		for _, size := range udpSizes {
			ids = append(ids, udpFig(p, size, ""), udpFig(p, size, "loss"), udpFig(p, size, "max"))
		}
	}
	return ids
}

// runUDP is the -udp mode.
func runUDP(cfg *config, tools []*tool, runs, steps, searchT int, window, bin string) string {
	ub := &udpBench{cfg: cfg, rec: &recorder{vals: map[[2]string][]float64{}}, steps: steps, searchT: searchT, window: window}
	out, in, pubIn, pubOut := udpPaths[0], udpPaths[1], udpPaths[2], udpPaths[3]
	tsteps := []toolStep{
		{name: "udp-out", figs: udpStepFigs(out), f: func(s *session) { ub.measurePaths(s, out) }},
		{name: "udp-in", figs: udpStepFigs(in), f: func(s *session) { ub.measurePaths(s, in) }},
		{name: "udp-pub", figs: udpStepFigs(pubIn, pubOut), opts: sessionOpts{publish: true, pubUDP: true}, f: func(s *session) { ub.measurePaths(s, pubIn, pubOut) }},
		{name: "udp-lat", figs: []string{"udp-lat-p50", "udp-lat-p99"}, f: ub.measureLatency},
	}
	desc := fmt.Sprintf("Machine: %s. Tools: %s.", machine(), versions(bin))
	start := time.Now()
	runToolSteps(cfg, tools, runs, []benchStep{{"loopback", ub.measureLoopback}}, tsteps, ub.rec)
	elapsed := time.Since(start)

	names := toolNames(tools)
	wFlag := ""
	if window != "" {
		wFlag = " -w " + window
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## UDP (%s)\n\nMedian of %d runs, iperf3 -t %d (search runs -t %d, at most %d per figure). %s\n\n", time.Now().UTC().Format("2006-01-02"), runs, cfg.secs, searchT, steps, desc)
	renderToolTable(&b, ub.rec, cfg, udpFigures(), names, colLoopback, "host loopback (ns->host rows)")
	fmt.Fprintf(&b, `
Notes (whole run %.0f s):
- Every tool serves a fresh user+network namespace (unshare -Urn, as uid 65534) at MTU 65520 for each group of rows (ns->host; host->ns; both published-port paths; latency) and run; groups and tools are interleaved, each run starting with the next. rootlessnet and slirp4netns are reached at 10.0.2.2, pasta at the namespace's default gateway, which it maps to the host's 127.0.0.1 (its tap path). %s
- Every iperf3 run (3.12) has a fresh one-off server (iperf3 -s -1), so that a run that ends badly cannot leave it busy; UDP needs iperf3's TCP control connection too, which every tool carries. ns->host: iperf3 -s on the host's 127.0.0.1, iperf3 -c GATEWAY -u in the namespace (nsenter); host->ns: the same with -R (the host's server sends).
- Published port: the tool publishes 127.0.0.1:PORT for TCP and UDP to guest port %d (rootlessnet -p 127.0.0.1:PORT:%d/tcp and /udp; slirp4netns add_hostfwd on its API socket, "proto" "tcp" and "udp"; pasta -t and -u 127.0.0.1/PORT:%d), iperf3 -s in the namespace, the client on the host to 127.0.0.1:PORT; host->ns is the client sending, ns->host is -R. pasta serves loopback clients of its forwards by splicing (a socket of its own in the namespace: pasta 2023 to 127.0.0.1, pasta 2025 to the namespace's address; no tap).%s
- Socket buffers: %s
- Unlimited sender: iperf3 -u -b 0 -l SIZE -t %d%s; the received rate and loss are the receiver's (iperf3's sum_received); with -b 0 the loss mostly measures how far the sender outruns the receiver (it is high on plain loopback too).
- Highest offered rate with ≤1%% loss: if the unlimited run lost 1%% or less, its sent rate (the sender is the limit; no search run). Otherwise at most %d runs of iperf3 -u -b RATE -l SIZE -t %d%s: the first at 0.99x the unlimited run's received rate, each next halfway between the highest passing and the lowest failing -b, halving while none has passed; the figure is the sender's measured send rate (sum_sent) of the best passing run, or n/a if none passed (reason on stderr). So each path and size costs 1 to %d iperf3 runs; the resolution is about the unlimited received rate / 2^%d.
- Datagrams of 8000 B need the MTU 65520 sessions (they would be IP fragments at 1500).
- Latency: the bench's helper in the namespace sends 64 B datagrams on one connected UDP socket to a UDP echo server of the bench on the host's 127.0.0.1 through the gateway, one outstanding; 100 warm-up then %d round trips; a datagram unanswered within 500 ms is counted lost (stderr), not timed, and the run fails past 10%%.
- host loopback (the reference column, ns->host rows and latency only): the same runs with client and server both on the host's 127.0.0.1 (the latency client is the helper as uid 65534).
- Ratios are rootlessnet/peer of the medians (none for losses); for "lower is better" rows a ratio below 1 favours rootlessnet. n/a: the figure failed (reason on stderr). -figures takes these ids or patterns: udp-{out,in,pub-in,pub-out}-{64,1400,8000}[-loss|-max], udp-lat-p50, udp-lat-p99 (e.g. 'udp-out-*').
`, elapsed.Seconds(), toolsNote(names), guestPort, guestPort, guestPort, pasta2023UDPNote(names), bufferNote(window), cfg.secs, wFlag, steps, searchT, wFlag, steps+1, steps, cfg.rtts)
	return b.String()
}

// bufferNote says what the iperf3 ends' socket buffers were.
func bufferNote(window string) string {
	sysctl := func(name string) string {
		b, err := os.ReadFile("/proc/sys/net/core/" + name)
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	limits := fmt.Sprintf("net.core.rmem_max %s, wmem_max %s, rmem_default %s", sysctl("rmem_max"), sysctl("wmem_max"), sysctl("rmem_default"))
	if window == "" {
		return "iperf3's defaults on both ends (" + limits + "): the iperf3 receiver's own socket can be the limit of the ≤1% rows."
	}
	return "every iperf3 run has -w " + window + " (SO_SNDBUF and SO_RCVBUF of both ends' UDP sockets, capped by " + limits + "), so that the iperf3 ends are not what drops (on the shared 2-core VM this was written on, plain loopback lost 1% at 0.6 Gbit/s of 1400 B with the 208 KiB default, nothing with 4 MiB). The tools' own sockets keep whatever buffers the tools choose. -udp-w '' runs with iperf3's defaults."
}

// pasta2023UDPNote: why Debian 12's pasta has no published-port UDP
// figures, when it is measured.
func pasta2023UDPNote(names []string) string {
	for _, n := range names {
		if n == "pasta" {
			return " pasta 2023's UDP forward delivers a loopback client's datagrams into the namespace but returns no reply to the client (checked by hand with a UDP echo server in the namespace: no answer reaches the host client; pasta 2025 answers), so iperf3's UDP connect never completes and those figures are n/a, each run killed after -t + 10 s."
		}
	}
	return ""
}

func toolNames(tools []*tool) []string {
	names := make([]string, len(tools))
	for i, t := range tools {
		names[i] = t.name
	}
	return names
}
