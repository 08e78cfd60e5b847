package main

// -networks: the figures of issue 17 (rootless networks), each path run
// as uid 65534 like every tool of the bench:
//
//   - member-to-member TCP throughput (iperf3 server in member "a", client
//     in member "b" connecting to "a" by name) at MTU 65520 and 1500,
//     against host loopback and against two `rootlessnet run` namespaces
//     talking through a published port on the host (the path without
//     networks);
//   - member-to-member 64 B round trips, against the same two;
//   - a member's outbound TCP to the host's 127.0.0.1 through the
//     network's gateway and a port published into a member, against a
//     plain `rootlessnet run`;
//   - 50 members: the network process's RSS with none and with 50, and the
//     time for 50 to join and to leave in parallel;
//   - podman's rootless bridge network, member to member (iperf3 from the
//     host mounted into a busybox container), where podman is installed.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Column names of the networks table (recorder tools).
const (
	colNet      = "network"
	colLoopback = "loopback"
	colRun      = "run"
	colPodman   = "podman"
)

type netFigure struct {
	id, label, format string
	// loop: a throughput, compared with host loopback's figure of this
	// id ("tcp", "udp"); lat: compared with its round trips.
	loop string
	lat  bool
}

var netFigures = []netFigure{
	{"m2m-65520", "member->member TCP, MTU 65520, Gbit/s", "%.2f", "tcp", false},
	{"m2m-1500", "member->member TCP, MTU 1500, Gbit/s", "%.2f", "tcp", false},
	{"lat-p50", "member->member TCP 64 B round trip p50, µs (lower is better)", "%.0f", "", true},
	{"lat-p99", "member->member TCP 64 B round trip p99, µs (lower is better)", "%.0f", "", true},
	{"out", "member outbound TCP to the host's 127.0.0.1 through the gateway, Gbit/s", "%.2f", "tcp", false},
	{"out-udp", "member outbound UDP 1400 B to the host's 127.0.0.1 through the gateway, unlimited sender, received Gbit/s", "%.2f", "udp", false},
	{"in-udp", "the same from the host to the member (iperf3 -R), received Gbit/s", "%.2f", "udp", false},
	{"pub", "published port, host client -> member, Gbit/s", "%.2f", "tcp", false},
	{"rss0", "network process RSS, no members, MiB", "%.1f", "", false},
	{"rss50", "network process RSS, 50 members, MiB", "%.1f", "", false},
	{"join50", "50 members joining in parallel, s", "%.2f", "", false},
	{"leave50", "50 members leaving in parallel, s", "%.2f", "", false},
}

// udpArgs are the iperf3 client's arguments of the UDP rows: 1400 B
// datagrams as fast as the sender can, both ends' buffers 4 MiB (as the
// -udp mode's default).
var udpArgs = []string{"-u", "-b", "0", "-l", "1400", "-w", "4M"}

// latPort is where the echo servers of the latency figures listen.
const latPort = 7000

// netBench drives rootlessnet's networks as uid 65534, with a state
// directory (XDG_RUNTIME_DIR) of its own.
type netBench struct {
	cfg *config
	bin string
	xdg string
	// netns: a network namespace under /run/netns to run in (-overlay's
	// hosts), "" for the bench's own.
	netns string
	rec   *recorder

	mu       sync.Mutex
	networks map[string]bool // created and not yet removed
	seq      int
}

// cmd is rootlessnet with args as uid 65534, in the bench's state
// directory; RNBENCH_HELPER reaches the commands of `run`, for the
// helper's modes.
func (nb *netBench) cmd(ctx context.Context, args ...string) *exec.Cmd {
	c := nsCommand(ctx, nb.netns, nb.bin, args...)
	c.Env = append(c.Env, "XDG_RUNTIME_DIR="+nb.xdg, helperEnv+"=1")
	return c
}

// rn runs a rootlessnet command to its end.
func (nb *netBench) rn(timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runOutput(ctx, nb.cmd(ctx, args...))
}

type netStatus struct {
	Gateway string `json:"gateway"`
	Pid     int    `json:"pid"`
	Members []struct {
		Name string `json:"name"`
	} `json:"members"`
}

func (st netStatus) has(member string) bool {
	for _, m := range st.Members {
		if m.Name == member {
			return true
		}
	}
	return false
}

func (nb *netBench) inspect(name string) (netStatus, error) {
	var st netStatus
	out, err := nb.rn(30*time.Second, "network", "inspect", name)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(out, &st)
	return st, err
}

// create makes a fresh network (a new name each time) and returns its
// name and status.
func (nb *netBench) create(extra ...string) (string, netStatus, error) {
	nb.mu.Lock()
	nb.seq++
	name := fmt.Sprintf("bn%d", nb.seq)
	nb.networks[name] = true
	nb.mu.Unlock()
	args := append([]string{"network", "create", name, "--log-level", "error"}, extra...)
	if _, err := nb.rn(60*time.Second, args...); err != nil {
		return name, netStatus{}, err
	}
	st, err := nb.inspect(name)
	if err == nil && st.Pid == 0 {
		err = errors.New("inspect shows no pid")
	}
	return name, st, err
}

// remove stops network name (-f: its members too) and kills what is left
// of its process tree. It does not go through startProc, so that it also
// works while the bench is being torn down.
func (nb *netBench) remove(name string) {
	nb.mu.Lock()
	if !nb.networks[name] {
		nb.mu.Unlock()
		return
	}
	delete(nb.networks, name)
	nb.mu.Unlock()
	// The process tree, to kill whatever rm leaves.
	var pids []int
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	out, err := nb.cmd(ctx, "network", "inspect", name).Output()
	cancel()
	var st netStatus
	if err == nil && json.Unmarshal(out, &st) == nil && st.Pid > 0 {
		pids = procTree(st.Pid)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 40*time.Second)
	out, err = nb.cmd(ctx, "network", "rm", "-f", name).CombinedOutput()
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: network rm -f %s: %v: %s\n", name, err, firstLine(out))
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

func (nb *netBench) removeAll() {
	nb.mu.Lock()
	var names []string
	for n := range nb.networks {
		names = append(names, n)
	}
	nb.mu.Unlock()
	for _, n := range names {
		nb.remove(n)
	}
}

// runArgs is `run` with flags, then -- and the command.
func runArgs(flags []string, command ...string) []string {
	return append(append(append([]string{"run"}, flags...), "--"), command...)
}

// server starts a long-lived `run` whose command prints word when it
// serves; the returned proc is stopped by the caller.
func (nb *netBench) server(word string, flags []string, command ...string) (*proc, error) {
	c := nb.cmd(context.Background(), runArgs(flags, command...)...)
	stderr := &tailBuffer{}
	c.Stderr = stderr
	p, _, err := startWithLine(c, word, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.tail())
	}
	return p, nil
}

// iperf runs an iperf3 client as the command of a `run` and parses it.
func (nb *netBench) iperf(flags []string, args ...string) (*iperfResult, error) {
	args = append(append([]string{"iperf3"}, args...), "-t", fmt.Sprint(nb.cfg.secs), "-J", "--connect-timeout", "5000")
	out, err := nb.rn(time.Duration(nb.cfg.secs+40)*time.Second, runArgs(flags, args...)...)
	return parseIperf(out, err)
}

// latency runs the helper's latency client as the command of a `run`.
func (nb *netBench) latency(flags []string, addr string) (latencyResult, error) {
	var r latencyResult
	out, err := nb.rn(90*time.Second, runArgs(flags, nb.cfg.helper, "latency", addr, fmt.Sprint(nb.cfg.rtts), "64")...)
	if err == nil {
		err = json.Unmarshal(out, &r)
	}
	return r, err
}

func (nb *netBench) addTput(col, fig string, r *iperfResult, err error) {
	if err != nil {
		nb.rec.fail(col, fig, err)
		return
	}
	nb.rec.add(col, fig, r.End.SumReceived.BitsPerSecond/1e9)
}

func (nb *netBench) addLat(col string, r latencyResult, err error) {
	if err != nil {
		nb.rec.fail(col, "lat-p50, lat-p99", err)
		return
	}
	nb.rec.add(col, "lat-p50", r.P50us)
	nb.rec.add(col, "lat-p99", r.P99us)
}

// measureNetwork: member to member throughput at the given MTU, and at
// MTU 65520 latency, outbound and the published port, each in a network
// of its own, created for it: a member that leaves frees its name and
// address before its bridge port and name are gone, so a member that
// joins at once with the same name or address could meet what is left.
func (nb *netBench) measureNetwork(mtu int) {
	fig := fmt.Sprintf("m2m-%d", mtu)
	// withNetwork runs f with the new network's name and status.
	withNetwork := func(figs string, f func(name string, st netStatus)) {
		name, st, err := nb.create("--mtu", fmt.Sprint(mtu))
		defer nb.remove(name)
		if err != nil {
			nb.rec.fail(colNet, figs, fmt.Errorf("network create: %w", err))
			return
		}
		f(name, st)
	}
	member := func(network, n string, extra ...string) []string {
		return append([]string{"--network", network, "--name", n}, extra...)
	}
	withNetwork(fig, func(name string, _ netStatus) {
		a, err := nb.server("listening", member(name, "a"), "iperf3", "-s", "--forceflush", "-p", fmt.Sprint(guestPort))
		if err != nil {
			nb.rec.fail(colNet, fig, err)
			return
		}
		defer a.stop(3 * time.Second)
		r, err := nb.iperf(member(name, "b"), "-c", "a", "-p", fmt.Sprint(guestPort))
		nb.addTput(colNet, fig, r, err)
	})
	if mtu != 65520 {
		return
	}
	withNetwork("lat-p50, lat-p99", func(name string, _ netStatus) {
		a, err := nb.server("listening", member(name, "a"), nb.cfg.helper, "echo", fmt.Sprint(latPort))
		if err != nil {
			nb.rec.fail(colNet, "lat-p50, lat-p99", err)
			return
		}
		defer a.stop(3 * time.Second)
		r, err := nb.latency(member(name, "b"), net.JoinHostPort("a", fmt.Sprint(latPort)))
		nb.addLat(colNet, r, err)
	})
	withNetwork("out", func(name string, st netStatus) {
		r, err := nb.iperf(member(name, "c"), "-c", st.Gateway, "-p", fmt.Sprint(nb.cfg.hostPort))
		nb.addTput(colNet, "out", r, err)
	})
	withNetwork("out-udp, in-udp", func(name string, st netStatus) {
		nb.measureUDP(colNet, member(name, "u"), st.Gateway)
	})
	withNetwork("pub", func(name string, _ netStatus) {
		hp, err := freePort()
		if err != nil {
			nb.rec.fail(colNet, "pub", err)
			return
		}
		p, err := nb.server("listening", member(name, "p", "-p", fmt.Sprintf("127.0.0.1:%d:%d", hp, guestPort)), "iperf3", "-s", "--forceflush", "-p", fmt.Sprint(guestPort))
		if err == nil {
			defer p.stop(3 * time.Second)
			err = waitHostListening(hp, 5*time.Second)
		}
		if err != nil {
			nb.rec.fail(colNet, "pub", err)
			return
		}
		r, err := iperfHost(nb.cfg.secs, "-c", "127.0.0.1", "-p", fmt.Sprint(hp), "-t", fmt.Sprint(nb.cfg.secs))
		nb.addTput(colNet, "pub", r, err)
	})
}

// measureUDP: the UDP rows of column col, a run with flags against the
// host's server through gw, both ways (each run a new member or namespace).
func (nb *netBench) measureUDP(col string, flags []string, gw string) {
	for _, dir := range []struct{ fig, r string }{{"out-udp", ""}, {"in-udp", "-R"}} {
		args := append([]string{"-c", gw, "-p", fmt.Sprint(nb.cfg.hostPort)}, udpArgs...)
		if dir.r != "" {
			args = append(args, dir.r)
		}
		r, err := nb.iperf(flags, args...)
		nb.addTput(col, dir.fig, r, err)
	}
}

// measureRuns: the path without networks, two `rootlessnet run`
// namespaces, the server's published on the host's 127.0.0.1 and the
// client connecting to it through 10.0.2.2; at MTU 65520 also latency,
// and a single run's outbound and published-port figures.
func (nb *netBench) measureRuns(mtu int) {
	fig := fmt.Sprintf("m2m-%d", mtu)
	full := mtu == 65520
	m := []string{"--mtu", fmt.Sprint(mtu)}
	hp, err := freePort()
	if err != nil {
		nb.rec.fail(colRun, fig, err)
		return
	}
	srv, err := nb.server("listening", append(m, "-p", fmt.Sprintf("127.0.0.1:%d:%d", hp, guestPort)), "iperf3", "-s", "--forceflush", "-p", fmt.Sprint(guestPort))
	if err == nil {
		if err = waitHostListening(hp, 5*time.Second); err != nil {
			srv.stop(3 * time.Second)
		}
	}
	if err != nil {
		nb.rec.fail(colRun, fig, err)
	} else {
		r, err := nb.iperf(m, "-c", "10.0.2.2", "-p", fmt.Sprint(hp))
		nb.addTput(colRun, fig, r, err)
		if full {
			// The published port of a single run, host client.
			r, err = iperfHost(nb.cfg.secs, "-c", "127.0.0.1", "-p", fmt.Sprint(hp), "-t", fmt.Sprint(nb.cfg.secs))
			nb.addTput(colRun, "pub", r, err)
		}
		srv.stop(3 * time.Second)
	}
	if !full {
		return
	}
	r, err := nb.iperf(m, "-c", "10.0.2.2", "-p", fmt.Sprint(nb.cfg.hostPort))
	nb.addTput(colRun, "out", r, err)
	nb.measureUDP(colRun, m, "10.0.2.2")

	if hp, err = freePort(); err != nil {
		nb.rec.fail(colRun, "lat-p50, lat-p99", err)
		return
	}
	echo, err := nb.server("listening", append(m, "-p", fmt.Sprintf("127.0.0.1:%d:%d", hp, latPort)), nb.cfg.helper, "echo", fmt.Sprint(latPort))
	if err == nil {
		defer echo.stop(3 * time.Second)
		err = waitHostListening(hp, 5*time.Second)
	}
	if err != nil {
		nb.rec.fail(colRun, "lat-p50, lat-p99", err)
		return
	}
	lr, err := nb.latency(m, net.JoinHostPort("10.0.2.2", fmt.Sprint(hp)))
	nb.addLat(colRun, lr, err)
}

// measureLoopback: iperf3 client and server both on the host's 127.0.0.1,
// and the helper's round trips to an echo server there (two processes).
func (nb *netBench) measureLoopback() {
	r, err := iperfHost(nb.cfg.secs, "-c", "127.0.0.1", "-p", fmt.Sprint(nb.cfg.hostPort), "-t", fmt.Sprint(nb.cfg.secs))
	nb.addTput(colLoopback, "tcp", r, err)
	r, err = iperfHost(nb.cfg.secs, append([]string{"-c", "127.0.0.1", "-p", fmt.Sprint(nb.cfg.hostPort), "-t", fmt.Sprint(nb.cfg.secs)}, udpArgs...)...)
	nb.addTput(colLoopback, "udp", r, err)
	echo, err := newEchoServer("127.0.0.1:0")
	if err != nil {
		nb.rec.fail(colLoopback, "lat-p50, lat-p99", err)
		return
	}
	defer echo.close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := unprivileged(exec.CommandContext(ctx, nb.cfg.helper, "latency", net.JoinHostPort("127.0.0.1", fmt.Sprint(echo.port())), fmt.Sprint(nb.cfg.rtts), "64"))
	if c.Env == nil {
		c.Env = os.Environ()
	}
	c.Env = append(c.Env, helperEnv+"=1")
	var lr latencyResult
	out, err := runOutput(ctx, c)
	if err == nil {
		err = json.Unmarshal(out, &lr)
	}
	nb.addLat(colLoopback, lr, err)
}

// measureMembers: a fresh network's RSS, then 50 members (sleep) started
// at once: the time until inspect lists 50, the RSS, then SIGTERM to the
// 50 runs and the time until inspect lists none.
func (nb *netBench) measureMembers(n int) {
	figs := "rss0, rss50, join50, leave50"
	name, st, err := nb.create()
	defer nb.remove(name)
	if err != nil {
		nb.rec.fail(colNet, figs, fmt.Errorf("network create: %w", err))
		return
	}
	time.Sleep(500 * time.Millisecond)
	if v, err := rssMiB(st.Pid); err != nil {
		nb.rec.fail(colNet, "rss0", err)
	} else {
		nb.rec.add(colNet, "rss0", v)
	}
	procs := make([]*proc, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := nb.cmd(context.Background(), runArgs([]string{"--network", name, "--name", fmt.Sprintf("m%d", i)}, "sleep", "900")...)
			c.Stderr = &tailBuffer{}
			procs[i], errs[i] = startProc(c)
		}()
	}
	wg.Wait()
	defer func() {
		for _, p := range procs {
			p.stop(3 * time.Second)
		}
	}()
	if err := errors.Join(errs...); err != nil {
		nb.rec.fail(colNet, figs, err)
		return
	}
	// count polls inspect until it lists want members.
	count := func(want int) (time.Duration, error) {
		deadline := time.Now().Add(3 * time.Minute)
		for {
			st, err := nb.inspect(name)
			if err != nil {
				return 0, err
			}
			if len(st.Members) == want {
				return 0, nil
			}
			for _, p := range procs {
				if want > 0 && p.exited() {
					return 0, fmt.Errorf("a member's run exited: %v: %s", p.err, p.cmd.Stderr.(*tailBuffer).tail())
				}
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("inspect lists %d members after 3 min, want %d", len(st.Members), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := count(n); err != nil {
		nb.rec.fail(colNet, figs, err)
		return
	}
	nb.rec.add(colNet, "join50", time.Since(t0).Seconds())
	time.Sleep(500 * time.Millisecond)
	if v, err := rssMiB(st.Pid); err != nil {
		nb.rec.fail(colNet, "rss50", err)
	} else {
		nb.rec.add(colNet, "rss50", v)
	}
	t1 := time.Now()
	for _, p := range procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	if _, err := count(0); err != nil {
		nb.rec.fail(colNet, "leave50", err)
		return
	}
	nb.rec.add(colNet, "leave50", time.Since(t1).Seconds())
}

// runNetworks is the -networks mode: runs rounds of every path, each
// round in another order, then renders the table.
func runNetworks(cfg *config, bin string, runs int, addCleanup func(func())) string {
	xdg := filepath.Join(cfg.tmp, "xdg")
	if err := os.Mkdir(xdg, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return ""
	}
	if os.Geteuid() == 0 {
		os.Chown(xdg, 65534, 65534)
	}
	nb := &netBench{cfg: cfg, bin: bin, xdg: xdg, rec: &recorder{vals: map[[2]string][]float64{}}, networks: map[string]bool{}}
	addCleanup(nb.removeAll)
	pod := newPodBench(cfg, nb.rec)
	addCleanup(pod.close)
	tools := versions(bin)
	if out, err := output(10*time.Second, "podman", "--version"); err == nil && pod.why == "" {
		tools += ", " + firstLine(out)
	}
	desc := fmt.Sprintf("Machine: %s. Tools: %s.", machine(), tools)
	steps := []benchStep{
		{"loopback", nb.measureLoopback},
		{"network MTU 65520", func() { nb.measureNetwork(65520) }},
		{"network MTU 1500", func() { nb.measureNetwork(1500) }},
		{"two runs MTU 65520", func() { nb.measureRuns(65520) }},
		{"two runs MTU 1500", func() { nb.measureRuns(1500) }},
		{"50 members", func() { nb.measureMembers(50) }},
		{"podman", pod.measure},
	}
	start := time.Now()
	interleave(runs, steps)
	return renderNetworks(nb.rec, cfg, runs, desc, pod.note(), time.Since(start))
}

// benchStep is one measurement of a mode's round.
type benchStep struct {
	name string
	f    func()
}

// interleave runs every step runs times, each round starting with another
// step, until a signal stops the bench.
func interleave(runs int, steps []benchStep) {
	for r := 0; r < runs; r++ {
		for i := range steps {
			if stopping.Load() {
				select {} // the signal handler exits
			}
			s := steps[(i+r)%len(steps)]
			t0 := time.Now()
			s.f()
			if verbose {
				fmt.Fprintf(os.Stderr, "bench: run %d/%d, %s: %.1f s\n", r+1, runs, s.name, time.Since(t0).Seconds())
			}
		}
	}
}

func renderNetworks(rec *recorder, cfg *config, runs int, desc, podNote string, elapsed time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Networks (%s)\n\nMedian of %d runs, iperf3 -t %d. %s\n\n", time.Now().UTC().Format("2006-01-02"), runs, cfg.secs, desc)
	cols := []string{colNet, colLoopback, colRun, colPodman}
	fmt.Fprintf(&b, "| figure | network | host loopback | rootlessnet run, no network | podman bridge | network/loopback | network/run | network/podman |\n|---|---|---|---|---|---|---|---|\n")
	for _, f := range netFigures {
		v := map[string]float64{}
		for _, c := range cols {
			v[c] = rec.median(c, f.id)
		}
		switch {
		case f.loop != "":
			v[colLoopback] = rec.median(colLoopback, f.loop)
		case !f.lat:
			v[colLoopback], v[colRun], v[colPodman] = math.NaN(), math.NaN(), math.NaN()
		}
		cell := func(c string) string {
			if math.IsNaN(v[c]) && (f.loop == "" && !f.lat || c == colPodman && len(rec.vals[[2]string{c, f.id}]) == 0) {
				return ""
			}
			return fmtVal(f.format, v[c])
		}
		ratioCell := func(c string) string {
			if cell(c) == "" {
				return ""
			}
			return ratio(v[colNet], v[c])
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", f.label, cell(colNet), cell(colLoopback), cell(colRun), cell(colPodman), ratioCell(colLoopback), ratioCell(colRun), ratioCell(colPodman))
	}
	fmt.Fprintf(&b, `
Notes (whole run %.0f s):
- network: rootlessnet network create (--mtu 1500 for that row, the default 65520 otherwise), a fresh network per figure and run; members are rootlessnet run --network N --name HOST, all as uid 65534. Member to member: iperf3 -s in member a, iperf3 -c a in member b (by name, through the network's DNS; the kernel bridge).
- host loopback: iperf3 client and server both on the host's 127.0.0.1 (the ceiling; the same figure in every throughput row); round trips from this binary as a separate process to an echo server on 127.0.0.1.
- rootlessnet run, no network: member to member rows are two rootlessnet run namespaces (--mtu as the row), the server's port published on 127.0.0.1 (-p) and the client connecting to 10.0.2.2:PORT, through the host and both userspace stacks; the outbound and published-port rows are one plain rootlessnet run (client to 10.0.2.2, run -p).
- Latency: one TCP connection (TCP_NODELAY), 100 warm-up then %d round trips of 64 bytes, the bench's helper (echo PORT in member a, latency ADDR in member b).
- Outbound: iperf3 -c GATEWAY -p PORT from a member (10.0.2.2 from a plain run) to the bench's iperf3 server on the host's 127.0.0.1. UDP rows: the same with -u -b 0 -l 1400 -w 4M (and -R), the received rate; host loopback's is iperf3 -u to 127.0.0.1 with the same options. Published port: iperf3 -s in the member (-p 127.0.0.1:PORT:5201), host client to 127.0.0.1:PORT.
- 50 members: VmRSS of the network's process and its descendants (the hub child), 0.5 s after create and 0.5 s after the 50th member is listed; members run sleep. Join: from starting the 50 runs at once until network inspect lists 50 (polled every 20 ms plus an inspect's time); leave: from SIGTERM to the 50 runs until inspect lists none.
- %s
- Ratios are network/column of the medians; for "lower is better" rows a ratio above 1 favours the column. n/a: the figure failed (reason on stderr).
`, elapsed.Seconds(), cfg.rtts, podNote)
	return b.String()
}
