// Command bench measures rootlessnet side by side with slirp4netns and
// pasta, every tool run as uid 65534 when run as root, runs interleaved,
// medians printed with the ratio of rootlessnet to each peer, loopback only
// (all traffic stays on 127.0.0.1 or inside namespaces the bench creates):
//
//   - TCP throughput (iperf3) from a namespace to a server on the host's
//     127.0.0.1 through each tool's gateway, and back (-R), at MTU 65520
//     and 1500;
//   - through a published port: host client -> 127.0.0.1:PORT -> iperf3
//     server in the namespace, both ways;
//   - UDP throughput and loss (iperf3 -u -l 1400) namespace -> host;
//   - request/response latency (64-byte ping-pong) and new connections per
//     second, from a client inside the namespace (this binary, re-executed
//     through nsenter) to an echo server the bench runs on 127.0.0.1;
//   - RSS of the stack process idle and with 1500 open connections;
//   - CPU seconds of the stack process per GB moved;
//   - plain host loopback TCP throughput as the ceiling.
//
// With -networks it measures rootless networks instead (networks.go), with
// -overlay a network across two hosts over VXLAN (overlay.go, as root),
// with -startup the start-up (startup.go), with -udp UDP at three
// datagram sizes on four paths (udp.go), with -dns DNS lookups through
// each tool (dns.go, as root), with -flows several flows at once
// (flows.go). -install-pasta builds pasta 2025 into /usr/local/bin
// (pasta-2025.sh), measured as the tool pasta-2025 wherever pasta is.
//
// Usage:
//
//	go build -o /tmp/rootlessnet ./cmd/rootlessnet && go run ./test/bench -rootlessnet /tmp/rootlessnet
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// verbose reports progress on stderr (-v).
var verbose bool

type figure struct {
	id, label string
	format    string
	// tput: a TCP throughput, also compared with plain host loopback.
	tput bool
}

var figures = []figure{
	{"tcp-out-65520", "TCP ns->host MTU 65520, Gbit/s", "%.2f", true},
	{"tcp-in-65520", "TCP host->ns MTU 65520, Gbit/s", "%.2f", true},
	{"tcp-out-1500", "TCP ns->host MTU 1500, Gbit/s", "%.2f", true},
	{"tcp-in-1500", "TCP host->ns MTU 1500, Gbit/s", "%.2f", true},
	{"pub-in", "published port host->ns, Gbit/s", "%.2f", true},
	{"pub-out", "published port ns->host (-R), Gbit/s", "%.2f", true},
	{"pub-in-bypass", "published port host->ns, --port-bypass (rootlessnet only), Gbit/s", "%.2f", true},
	{"pub-out-bypass", "published port ns->host (-R), --port-bypass (rootlessnet only), Gbit/s", "%.2f", true},
	{"udp-out", "UDP ns->host received, Gbit/s", "%.2f", false},
	{"udp-loss", "UDP ns->host loss, % (lower is better)", "%.1f", false},
	{"udp-in", "UDP host->ns received, Gbit/s", "%.2f", false},
	{"udp-in-loss", "UDP host->ns loss, % (lower is better)", "%.1f", false},
	{"lat-p50", "TCP 64 B round trip p50, µs (lower is better)", "%.0f", false},
	{"lat-p99", "TCP 64 B round trip p99, µs (lower is better)", "%.0f", false},
	{"pub-lat-p50", "published port TCP 64 B round trip p50, µs (lower is better)", "%.0f", false},
	{"pub-lat-p99", "published port TCP 64 B round trip p99, µs (lower is better)", "%.0f", false},
	{"connrate", "new TCP connections ns->host, conn/s", "%.0f", false},
	{"rss-idle", "RSS idle, MiB (lower is better)", "%.1f", false},
	{"rss-hold", "RSS with 1500 connections, MiB (lower is better)", "%.1f", false},
	{"cpu-out", "CPU per GB ns->host MTU 65520, s (lower is better)", "%.2f", false},
	{"cpu-in", "CPU per GB host->ns MTU 65520, s (lower is better)", "%.2f", false},
}

// recorder collects the figures of every run; failures are reported on
// stderr at once and end up as "n/a".
type recorder struct {
	vals map[[2]string][]float64
}

func (r *recorder) add(tool, fig string, v float64) {
	k := [2]string{tool, fig}
	r.vals[k] = append(r.vals[k], v)
}

func (r *recorder) fail(tool, fig string, err error) {
	if stopping.Load() {
		return
	}
	fmt.Fprintf(os.Stderr, "bench: %s: %s: %v\n", tool, fig, err)
}

func (r *recorder) median(tool, fig string) float64 {
	return median(r.vals[[2]string{tool, fig}])
}

func main() {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain(os.Args[1:]))
	}
	bin := flag.String("rootlessnet", "./rootlessnet", "rootlessnet binary")
	runs := flag.Int("runs", 3, "runs per figure (median reported)")
	secs := flag.Int("t", 3, "seconds per iperf3 run")
	out := flag.String("o", "", "append the dated table to this markdown file")
	rtts := flag.Int("rtts", 2000, "round trips of the latency figure")
	connSecs := flag.Float64("conn-t", 2, "seconds of the connections-per-second loop")
	hold := flag.Int("conns", 1500, "open connections for the RSS figure")
	udpRate := flag.String("udp-b", "0", "iperf3 -b for UDP (0: as fast as the sender can)")
	toolList := flag.String("tools", defaultTools(), "tools to measure, comma-separated (pasta is Debian 12's "+pastaBin+"; pasta-2025, "+pasta2025Bin+", is in the default list where it exists)")
	binB := flag.String("b", "", "A/B: a second rootlessnet binary, measured interleaved as rootlessnet-b")
	extra := flag.String("args", "", "extra flags for rootlessnet, space-separated (e.g. --tcp-fastpath)")
	extraB := flag.String("b-args", "", "extra flags for rootlessnet-b, space-separated (-b defaults to -rootlessnet's binary when only this is given)")
	only := flag.String("figures", "", "measure only these figures (comma-separated ids: tcp-out-65520, pub-in, udp-out, lat-p50, connrate, rss-idle, ...)")
	profile := flag.String("profile", "", "directory for pprof CPU and allocation profiles of every rootlessnet session (RLN_CPUPROFILE, RLN_MEMPROFILE)")
	networks := flag.Bool("networks", false, "measure rootless networks instead (issue 17: member to member, outbound, published ports, 50 members; against loopback, rootlessnet run and podman's bridge)")
	startup := flag.Bool("startup", false, "measure start-up instead (issue 18): the wall time of rootlessnet run -- true with and without confinement, pasta --config-net -- true, unshare -Urn plus slirp4netns until its ready fd, and the --netns form until it serves; with run's phases")
	overlay := flag.Bool("overlay", false, "measure a network across two hosts over VXLAN instead (issue 19: two namespaces joined by a veth; rootlessnet's overlay against the kernel's vxlan and the veth; needs root)")
	udp := flag.Bool("udp", false, "measure UDP instead (issue 18): datagrams of 64, 1400 and 8000 B ns->host, host->ns and through a published UDP port both ways; the unlimited sender's received rate and loss, the highest rate with at most 1% loss, and 64 B request/response latency")
	udpSteps := flag.Int("udp-steps", 4, "-udp: at most this many iperf3 runs in each search for the highest rate with at most 1% loss")
	udpSearchT := flag.Int("udp-search-t", 2, "-udp: seconds per search run (at most -t)")
	udpWindow := flag.String("udp-w", "4M", "-udp: iperf3 -w of every UDP run, the socket buffers of both iperf3 ends ('': iperf3's default)")
	dnsMode := flag.Bool("dns", false, "measure DNS lookups instead (issue 18): a DNS server of the bench on the host's 127.0.0.1:53, each tool forwarding its namespace's queries to it, against the same client on the host; needs root")
	lookups := flag.Int("lookups", 3000, "-dns: lookups per run")
	flowsMode := flag.Bool("flows", false, "measure several flows instead (issue 18): iperf3 -P 1, 4 and 16 both ways, and 100 concurrent TCP request/response connections")
	installPasta := flag.Bool("install-pasta", false, "build pasta 2025 (passt 2025-05-03, Debian 13's) into /usr/local/bin with the bench's pasta-2025.sh (root, gcc, make, network) and exit; afterwards the tool pasta-2025 is measured by default")
	flag.BoolVar(&verbose, "v", false, "report progress and timings on stderr")
	flag.Parse()
	if *runs < 1 || *secs < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs and -t must be at least 1")
		os.Exit(2)
	}
	selected := map[string]bool{}
	for _, f := range strings.Split(*only, ",") {
		if f = strings.TrimSpace(f); f != "" {
			selected[f] = true
		}
	}
	if *installPasta {
		if err := installPasta2025(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -install-pasta:", err)
			os.Exit(1)
		}
		return
	}
	modes := 0
	for _, m := range []bool{*networks, *startup, *overlay, *udp, *dnsMode, *flowsMode} {
		if m {
			modes++
		}
	}
	if modes > 1 {
		fmt.Fprintln(os.Stderr, "bench: -networks, -startup, -overlay, -udp, -dns and -flows are separate modes: pick one")
		os.Exit(2)
	}
	if *udpSteps < 1 || *udpSearchT < 1 || *lookups < 1 {
		fmt.Fprintln(os.Stderr, "bench: -udp-steps, -udp-search-t and -lookups must be at least 1")
		os.Exit(2)
	}
	raiseNofile()
	ensureTools()
	for _, need := range []string{"unshare", "nsenter", "iperf3"} {
		if _, err := exec.LookPath(need); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s not found (apt-get install iperf3 util-linux)\n", need)
			os.Exit(1)
		}
	}
	if *extraB != "" && *binB == "" {
		*binB = *bin
	}
	for _, p := range []*string{bin, binB, profile} {
		if *p == "" {
			continue
		}
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var cleanups []func()
	cleanup := func() {
		stopping.Store(true)
		killAll()
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: stopping\n", s)
		cleanup()
		os.Exit(130)
	}()
	fatal := func(err error) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		cleanup()
		os.Exit(1)
	}

	tmp, err := os.MkdirTemp("", "rnbench-")
	if err == nil {
		// uid 65534 reaches its session directories and the helper.
		err = os.Chmod(tmp, 0o755)
	}
	if err != nil {
		fatal(err)
	}
	cleanups = append(cleanups, func() { os.RemoveAll(tmp) })
	helper, err := installHelper(tmp)
	if err != nil {
		fatal(fmt.Errorf("copying the bench binary for the namespace client: %w", err))
	}

	hostPort, err := freePort()
	if err != nil {
		fatal(err)
	}
	srv, _, err := startWithLine(exec.Command("iperf3", "-s", "--forceflush", "-B", "127.0.0.1", "-p", fmt.Sprint(hostPort)), "listening", 10*time.Second)
	if err != nil {
		fatal(err)
	}
	cleanups = append(cleanups, func() { srv.stop(time.Second) })

	cfg := &config{tmp: tmp, secs: *secs, hostPort: hostPort, helper: helper, rtts: *rtts, connSecs: *connSecs, holdConns: *hold, udpRate: *udpRate, figures: selected, profileDir: *profile}
	if *startup {
		table := runStartup(*bin, max(*runs, 5))
		cleanup()
		fmt.Print(table)
		if err := appendTo(*out, table); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *overlay {
		table, err := runOverlay(cfg, *bin, *runs, func(f func()) { cleanups = append(cleanups, f) })
		if err != nil {
			fatal(err)
		}
		cleanup()
		fmt.Print(table)
		if err := appendTo(*out, table); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *networks {
		table := runNetworks(cfg, *bin, *runs, func(f func()) { cleanups = append(cleanups, f) })
		cleanup()
		fmt.Print(table)
		if err := appendTo(*out, table); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	tools, err := pickTools(newTools(*bin, *binB, strings.Fields(*extra), strings.Fields(*extraB), cfg), *toolList, *binB != "")
	if err != nil {
		fatal(err)
	}
	if *udp || *dnsMode || *flowsMode {
		var table string
		switch {
		case *udp:
			table = runUDP(cfg, tools, *runs, *udpSteps, min(*udpSearchT, *secs), *udpWindow, *bin)
		case *dnsMode:
			if table, err = runDNS(cfg, tools, *runs, *lookups, *bin); err != nil {
				fatal(err)
			}
		case *flowsMode:
			table = runFlows(cfg, tools, *runs, *bin)
		}
		cleanup()
		fmt.Print(table)
		if err := appendTo(*out, table); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	rec := &recorder{vals: map[[2]string][]float64{}}
	desc := fmt.Sprintf("Machine: %s. Tools: %s.", machine(), versions(*bin))
	start := time.Now()
	for r := 0; r < *runs; r++ {
		// The ceiling: client and server both on the host's 127.0.0.1.
		if res, err := iperfHost(*secs, "-c", "127.0.0.1", "-p", fmt.Sprint(hostPort), "-t", fmt.Sprint(*secs)); err != nil {
			rec.fail("loopback", "tcp", err)
		} else {
			rec.add("loopback", "tcp", res.End.SumReceived.BitsPerSecond/1e9)
		}
		for _, kind := range []string{kindRSS, kindMain, kind1500, kindBypass} {
			if !cfg.wantAny(kindFigures[kind]...) {
				continue
			}
			// Interleaved, and each run starts with another tool.
			for i := range tools {
				if stopping.Load() {
					select {} // the signal handler exits
				}
				t := tools[(i+r)%len(tools)]
				t0 := time.Now()
				runSession(cfg, t, kind, rec)
				if verbose {
					fmt.Fprintf(os.Stderr, "bench: run %d/%d, %s, %s figures: %.1f s\n", r+1, *runs, t.name, kind, time.Since(t0).Seconds())
				}
			}
		}
	}
	cleanup()
	elapsed := time.Since(start)

	names := make([]string, len(tools))
	for i, t := range tools {
		names[i] = t.name
	}
	table := render(rec, cfg, names, *runs, desc, elapsed)
	fmt.Print(table)
	if err := appendTo(*out, table); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// appendTo appends table to the markdown file path (none when "").
func appendTo(path, table string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(table)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// pickTools keeps the named tools, in the default order; with an A/B
// binary, rootlessnet-b comes right after rootlessnet.
func pickTools(all []*tool, list string, ab bool) ([]*tool, error) {
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	if ab {
		want["rootlessnet-b"] = true
	}
	var out []*tool
	for _, t := range all {
		if want[t.name] {
			out = append(out, t)
			delete(want, t.name)
		}
	}
	for n := range want {
		if n == "pasta-2025" {
			return nil, fmt.Errorf("-tools: pasta-2025: no %s (-install-pasta builds it)", pasta2025Bin)
		}
		return nil, fmt.Errorf("-tools: unknown tool %q", n)
	}
	if len(out) == 0 || out[0].name != "rootlessnet" {
		return nil, errors.New("-tools must include rootlessnet")
	}
	return out, nil
}

func render(rec *recorder, cfg *config, names []string, runs int, desc string, elapsed time.Duration) string {
	secs, hold, udpRate := cfg.secs, cfg.holdConns, cfg.udpRate
	var b strings.Builder
	fmt.Fprintf(&b, "\n## %s, median of %d runs, iperf3 -t %d\n\n", time.Now().Format("2006-01-02"), runs, secs)
	fmt.Fprintf(&b, "%s\n\n", desc)
	ceil := rec.median("loopback", "tcp")
	fmt.Fprintf(&b, "Plain host loopback (iperf3 client and server on 127.0.0.1): %s Gbit/s.\n\n", fmtVal("%.2f", ceil))
	peers := names[1:]
	fmt.Fprintf(&b, "| figure | %s |", strings.Join(names, " | "))
	for _, p := range peers {
		fmt.Fprintf(&b, " rootlessnet/%s |", p)
	}
	fmt.Fprintf(&b, " rootlessnet/loopback |\n|---|%s\n", strings.Repeat("---|", len(names)+len(peers)+1))
	for _, f := range figures {
		if !cfg.want(f.id) {
			continue
		}
		v := map[string]float64{}
		fmt.Fprintf(&b, "| %s |", f.label)
		for _, name := range names {
			v[name] = rec.median(name, f.id)
			cell := fmtVal(f.format, v[name])
			if f.id == "rss-hold" && !math.IsNaN(v[name]) {
				if held := rec.median(name, "held"); held < float64(hold) {
					cell += fmt.Sprintf(" (%.0f held)", held)
				}
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		lb := ""
		if f.tput {
			lb = ratio(v["rootlessnet"], ceil)
		}
		for _, p := range peers {
			fmt.Fprintf(&b, " %s |", ratio(v["rootlessnet"], v[p]))
		}
		fmt.Fprintf(&b, " %s |\n", lb)
	}
	udp := "-b " + udpRate
	if udpRate == "0" {
		udp = "-b 0 (unlimited)"
	}
	fmt.Fprintf(&b, `
Notes (whole run %.0f s):
- Every tool serves a fresh user+network namespace (unshare -Urn, as uid 65534) for each of three sessions per run (RSS; everything else at MTU 65520; TCP at MTU 1500); sessions are interleaved and each run starts with the next tool. rootlessnet and slirp4netns are reached at 10.0.2.2, pasta at the namespace's default gateway, which it maps to the host's 127.0.0.1; pasta's figures are therefore its tap path.
- TCP: iperf3 -t %d in the namespace (nsenter) against iperf3 -s on the host's 127.0.0.1, received rate; host->ns is -R.
- Published port: iperf3 -s on port %d in the namespace; host client to 127.0.0.1:PORT (rootlessnet -p, slirp4netns add_hostfwd on its API socket, pasta -t); host->ns is the client sending. pasta serves loopback clients of its forwards by splicing to the namespace's loopback (no TCP/IP stack in the path).
- Published port with --port-bypass (rootlessnet only; the peers' cells are n/a): the same measurement in a session of its own, rootlessnet started with --port-bypass: a helper in the namespace connects to the guest port and rootlessnet splices between the two kernel sockets, without the netstack (the guest sees its own address as the peer).
- UDP: iperf3 -u %s -l 1400 ns->host, and host->ns (-R); the received rate and the loss reported by the receiver.
- Latency: one TCP connection (TCP_NODELAY) from a client in the namespace (this binary re-executed through nsenter) to an echo server of the bench on 127.0.0.1; 100 warm-up then %d round trips of 64 bytes; p50/p99 of the round-trip times.
- Published-port latency: the same round trips from a client in the bench's process on the host to the published 127.0.0.1:PORT, answered by an echo server in the namespace on port %d (this binary through nsenter).
- Connections per second: the same client connects, writes 1 byte, reads it back and closes, one at a time, for a fixed time.
- RSS: VmRSS of the stack process (and any children), 0.5 s after it is ready, and with %d connections to the echo server open (opened by 8 parallel dialers, each one echoed once), in a session of its own with no other traffic.
- CPU per GB: utime+stime of the stack process across the iperf3 run (/proc/PID/stat, 10 ms ticks), divided by the GB (1e9 bytes) received.
- Ratios are rootlessnet/peer of the medians; for the "lower is better" rows a ratio below 1 favours rootlessnet. n/a: the figure failed (reason on stderr).%s
`, elapsed.Seconds(), secs, guestPort, udp, cfg.rtts, guestPort, hold, pastaNote(names))
	return b.String()
}

// pastaNote is the notes' line on the pasta columns ("" without any).
func pastaNote(names []string) string {
	if n := toolsNote(names); n != "" {
		return "\n- " + n
	}
	return ""
}

func fmtVal(format string, v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf(format, v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// machine describes the host: CPUs, kernel, memory.
func machine() string {
	cpus := "? CPUs"
	if out, err := output(5*time.Second, "nproc"); err == nil {
		cpus = strings.TrimSpace(string(out)) + " CPUs"
	}
	kernel := "Linux ?"
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		kernel = "Linux " + utsString(u.Release[:])
	}
	mem := "? GiB"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					kb, _ := strconv.ParseFloat(f[0], 64)
					mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
				}
			}
		}
	}
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "model name"); ok {
				model = ", " + strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%s%s, %s, %s RAM", cpus, model, kernel, mem)
}

func utsString(a []int8) string {
	var s []byte
	for _, c := range a {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// versions names the tools measured.
func versions(bin string) string {
	var parts []string
	if out, err := output(5*time.Second, bin, "--version"); err == nil {
		parts = append(parts, firstLine(out))
	} else {
		parts = append(parts, "rootlessnet (version unknown)")
	}
	for _, pkg := range [][2]string{{"slirp4netns", "slirp4netns"}, {"passt", "pasta (passt)"}, {"iperf3", "iperf3"}} {
		if out, err := output(5*time.Second, "dpkg-query", "-W", "-f", "${Version}", pkg[0]); err == nil && len(out) > 0 {
			parts = append(parts, pkg[1]+" "+string(out))
		} else if p, err := exec.LookPath(strings.Fields(pkg[1])[0]); err == nil {
			parts = append(parts, p)
		}
	}
	if _, err := os.Stat(pasta2025Bin); err == nil {
		parts = append(parts, "pasta-2025 (passt 2025-05-03, "+pasta2025Bin+")")
	}
	return strings.Join(parts, ", ")
}

// ensureTools installs missing peers and iperf3 from Debian's packages
// when running as root with apt-get; otherwise the missing tool's figures
// are n/a.
func ensureTools() {
	var missing []string
	for _, t := range [][2]string{{"iperf3", "iperf3"}, {"slirp4netns", "slirp4netns"}, {"pasta", "passt"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"}} {
		if _, err := exec.LookPath(t[0]); err != nil {
			missing = append(missing, t[1])
		}
	}
	if len(missing) == 0 {
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "bench: missing %s (apt-get install %s); their figures will be n/a\n", strings.Join(missing, ", "), strings.Join(missing, " "))
		return
	}
	fmt.Fprintf(os.Stderr, "bench: installing %s\n", strings.Join(missing, " "))
	if _, err := output(5*time.Minute, "apt-get", "update", "-qq"); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	args := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)
	if _, err := output(5*time.Minute, "apt-get", args...); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

// installHelper copies this binary into dir (mode 0755) so that the
// in-namespace client can be executed whatever the build cache's modes.
func installHelper(dir string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "rnbench")
	if err := copyFile(exe, path); err != nil {
		return "", err
	}
	return path, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		return errors.Join(err, os.Remove(dst))
	}
	return nil
}
