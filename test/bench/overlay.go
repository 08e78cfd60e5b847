package main

// -overlay: the figures of issue 19 (a rootless network across hosts over
// VXLAN). Two "hosts" are two network namespaces (ip netns) joined by a
// veth pair, 192.0.2.1/24 (A) and 192.0.2.2/24 (B); on them, each run:
//
//   - rootlessnet's overlay: `network create --vxlan` on each host (as
//     uid 65534, each with a state directory of its own), iperf3 -s and
//     the helper's echo in members on A, the clients in members on B, by
//     address;
//   - the ceiling: the kernel's vxlan (VNI 42, port 4789) on a bridge in
//     each host namespace, a namespace per "member" on the bridge by a
//     veth at MTU 1450, the same servers and clients (as uid 65534);
//   - the underlay: the same servers in host A's namespace, the clients in
//     B's, over the veth.
//
// Needs root (namespaces, links); everything it makes is removed at the
// end and on SIGINT/SIGTERM/SIGHUP.

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
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Columns of the overlay table.
const (
	colOverlay  = "overlay"
	colKernel   = "kernel"
	colUnderlay = "underlay"
)

var ovFigures = []netFigure{
	{"tcp", "TCP member on B -> member on A, Gbit/s", "%.2f", "tcp", false},
	{"retr", "TCP retransmits of the sender (per run of the row above)", "%.0f", "", false},
	{"lat-p50", "TCP 64 B round trip p50, µs (lower is better)", "%.0f", "", true},
	{"lat-p99", "TCP 64 B round trip p99, µs (lower is better)", "%.0f", "", true},
	{"drops", "drops at host A's VXLAN UDP socket during the TCP run (/proc/net/udp)", "%.0f", "", false},
	{"cpu-a", "CPU of host A's network process (receiver) during the TCP run, % of a core", "%.0f", "", false},
	{"cpu-b", "CPU of host B's network process (sender) during the TCP run, % of a core", "%.0f", "", false},
}

const (
	ovAddrA = "192.0.2.1"
	ovAddrB = "192.0.2.2"
	// Member addresses of the kernel ceiling (rootlessnet's come from
	// its IPAM: A's range is the subnet's lower half, B's the upper).
	kernMemberA = "10.200.0.10"
	kernMemberB = "10.200.0.140"
	ovMTU       = 1450
)

// nsCommand is name with args as uid 65534: in network namespace netns
// (a name under /run/netns, entered through nsenter as root) or, with "",
// in the bench's own (unprivileged()).
func nsCommand(ctx context.Context, netns, name string, args ...string) *exec.Cmd {
	if netns == "" {
		c := unprivileged(exec.CommandContext(ctx, name, args...))
		if c.Env == nil {
			c.Env = os.Environ()
		}
		return c
	}
	c := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netnsPath(netns), "-S", "65534", "-G", "65534", "--", name}, args...)...)
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}
	return c
}

func netnsPath(name string) string { return filepath.Join("/run/netns", name) }

// ovLauncher starts argv in role's place on one side of a path (for
// rootlessnet, a member named role; otherwise a namespace).
type ovLauncher func(ctx context.Context, role string, argv ...string) *exec.Cmd

// ovBench holds the two host namespaces and the rootlessnet state of
// each.
type ovBench struct {
	cfg    *config
	rec    *recorder
	tag    string
	hostNS [2]string
	nb     [2]*netBench
	// made: namespaces created, removed by cleanup.
	made []string
}

// ip runs ip(8) as root.
func ip(args ...string) error {
	_, err := output(30*time.Second, "ip", args...)
	return err
}

// ipTeardown runs ip(8) outside startProc, so that it also works while
// the bench is being torn down.
func ipTeardown(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, firstLine(out))
	}
	return nil
}

// setup creates the two host namespaces and the veth between them.
func (ob *ovBench) setup() error {
	for i, side := range []string{"a", "b"} {
		ns := ob.tag + side
		if err := ip("netns", "add", ns); err != nil {
			return err
		}
		ob.made = append(ob.made, ns)
		ob.hostNS[i] = ns
	}
	a, b := ob.hostNS[0], ob.hostNS[1]
	steps := [][]string{
		{"link", "add", "ul", "netns", a, "type", "veth", "peer", "name", "ul", "netns", b},
		{"-n", a, "addr", "add", ovAddrA + "/24", "dev", "ul"},
		{"-n", b, "addr", "add", ovAddrB + "/24", "dev", "ul"},
	}
	for _, ns := range ob.hostNS {
		steps = append(steps, []string{"-n", ns, "link", "set", "lo", "up"}, []string{"-n", ns, "link", "set", "ul", "up"})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// cleanup kills every process the bench still has below it (the bench
// is a child subreaper: members and network processes whose parents are
// gone were reparented to it) and every process left in a namespace the
// bench made, then deletes the namespaces.
func (ob *ovBench) cleanup() {
	self := os.Getpid()
	for _, p := range procTree(self) {
		if p != self {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	for i := len(ob.made) - 1; i >= 0; i-- {
		killInNetns(netnsPath(ob.made[i]))
		if err := ipTeardown("netns", "del", ob.made[i]); err != nil {
			fmt.Fprintf(os.Stderr, "bench: ip netns del %s: %v\n", ob.made[i], err)
		}
	}
	ob.made = nil
}

// killInNetns SIGKILLs the processes whose network namespace is the one
// bound at path, and their descendants.
func killInNetns(path string) {
	var want syscall.Stat_t
	if syscall.Stat(path, &want) != nil {
		return
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		for _, p := range procTree(pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// measure runs the TCP throughput and the round trips of one path: the
// servers started by srv (roles "iperf" and "echo"), the clients by cli,
// addr giving a server role's address once it serves. around, when set,
// is called before the throughput run and returns what to call after it.
func (ob *ovBench) measure(col string, srv, cli ovLauncher, addr func(role string) (string, error), around func() func()) {
	ctx := context.Background()
	// Throughput.
	func() {
		figs := "tcp"
		c := srv(ctx, "iperf", "iperf3", "-s", "--forceflush", "-p", fmt.Sprint(guestPort))
		stderr := &tailBuffer{}
		c.Stderr = stderr
		p, _, err := startWithLine(c, "listening", 30*time.Second)
		if err != nil {
			ob.rec.fail(col, figs, fmt.Errorf("%v: %s", err, stderr.tail()))
			return
		}
		defer p.stop(3 * time.Second)
		a, err := addr("iperf")
		if err != nil {
			ob.rec.fail(col, figs, err)
			return
		}
		var after func()
		if around != nil {
			after = around()
		}
		cctx, cancel := context.WithTimeout(ctx, time.Duration(ob.cfg.secs+40)*time.Second)
		defer cancel()
		out, err := runOutput(cctx, cli(cctx, "client", "iperf3", "-c", a, "-p", fmt.Sprint(guestPort), "-t", fmt.Sprint(ob.cfg.secs), "-J", "--connect-timeout", "5000"))
		if after != nil {
			after()
		}
		r, err := parseIperf(out, err)
		if err != nil {
			ob.rec.fail(col, figs, err)
			return
		}
		ob.rec.add(col, "tcp", r.End.SumReceived.BitsPerSecond/1e9)
		var sent struct {
			End struct {
				SumSent struct {
					Retransmits float64 `json:"retransmits"`
				} `json:"sum_sent"`
			} `json:"end"`
		}
		if json.Unmarshal(out, &sent) == nil {
			ob.rec.add(col, "retr", sent.End.SumSent.Retransmits)
		}
	}()
	// Round trips.
	figs := "lat-p50, lat-p99"
	c := srv(ctx, "echo", ob.cfg.helper, "echo", fmt.Sprint(latPort))
	c.Env = append(c.Env, helperEnv+"=1")
	stderr := &tailBuffer{}
	c.Stderr = stderr
	p, _, err := startWithLine(c, "listening", 30*time.Second)
	if err != nil {
		ob.rec.fail(col, figs, fmt.Errorf("%v: %s", err, stderr.tail()))
		return
	}
	defer p.stop(3 * time.Second)
	a, err := addr("echo")
	if err != nil {
		ob.rec.fail(col, figs, err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	lc := cli(cctx, "lclient", ob.cfg.helper, "latency", net.JoinHostPort(a, fmt.Sprint(latPort)), fmt.Sprint(ob.cfg.rtts), "64")
	lc.Env = append(lc.Env, helperEnv+"=1")
	out, err := runOutput(cctx, lc)
	var lr latencyResult
	if err == nil {
		err = json.Unmarshal(out, &lr)
	}
	if err != nil {
		ob.rec.fail(col, figs, err)
		return
	}
	ob.rec.add(col, "lat-p50", lr.P50us)
	ob.rec.add(col, "lat-p99", lr.P99us)
}

// hostLauncher runs argv in host namespace ns itself.
func hostLauncher(ns string) ovLauncher {
	return func(ctx context.Context, _ string, argv ...string) *exec.Cmd {
		return nsCommand(ctx, ns, argv[0], argv[1:]...)
	}
}

// measureUnderlay: servers in host A's namespace, clients in B's.
func (ob *ovBench) measureUnderlay() {
	ob.measure(colUnderlay, hostLauncher(ob.hostNS[0]), hostLauncher(ob.hostNS[1]), func(string) (string, error) { return ovAddrA, nil }, nil)
}

// measureKernel builds the kernel's vxlan on both hosts, measures, and
// takes it down again (its UDP port is the one rootlessnet's overlay
// binds).
func (ob *ovBench) measureKernel() {
	var members []string
	defer func() {
		for _, ns := range ob.hostNS {
			ipTeardown("-n", ns, "link", "del", "kvx")
			ipTeardown("-n", ns, "link", "del", "kbr")
		}
		for _, m := range members {
			killInNetns(netnsPath(m))
			ipTeardown("netns", "del", m)
			for i, n := range ob.made {
				if n == m {
					ob.made = append(ob.made[:i], ob.made[i+1:]...)
					break
				}
			}
		}
	}()
	setup := func(i int) error {
		host := ob.hostNS[i]
		self, peer, addr := ovAddrA, ovAddrB, kernMemberA
		if i == 1 {
			self, peer, addr = ovAddrB, ovAddrA, kernMemberB
		}
		m := host + "k"
		if err := ip("netns", "add", m); err != nil {
			return err
		}
		members = append(members, m)
		ob.made = append(ob.made, m)
		for _, s := range [][]string{
			{"-n", host, "link", "add", "kbr", "type", "bridge"},
			{"-n", host, "link", "add", "kvx", "type", "vxlan", "id", "42", "dstport", "4789", "remote", peer, "local", self, "dev", "ul"},
			{"-n", host, "link", "set", "kvx", "master", "kbr", "mtu", fmt.Sprint(ovMTU)},
			{"-n", host, "link", "add", "km", "type", "veth", "peer", "name", "eth0", "netns", m},
			{"-n", host, "link", "set", "km", "master", "kbr", "mtu", fmt.Sprint(ovMTU)},
			{"-n", m, "link", "set", "eth0", "mtu", fmt.Sprint(ovMTU)},
			{"-n", m, "addr", "add", addr + "/24", "dev", "eth0"},
			{"-n", m, "link", "set", "lo", "up"},
			{"-n", m, "link", "set", "eth0", "up"},
			{"-n", host, "link", "set", "kvx", "up"},
			{"-n", host, "link", "set", "km", "up"},
			{"-n", host, "link", "set", "kbr", "up"},
		} {
			if err := ip(s...); err != nil {
				return err
			}
		}
		return nil
	}
	for i := range ob.hostNS {
		if err := setup(i); err != nil {
			ob.rec.fail(colKernel, "all", fmt.Errorf("kernel vxlan: %w", err))
			return
		}
	}
	ob.measure(colKernel, hostLauncher(ob.hostNS[0]+"k"), hostLauncher(ob.hostNS[1]+"k"), func(string) (string, error) { return kernMemberA, nil }, nil)
}

// ovStatus is what the overlay bench reads from network inspect.
type ovStatus struct {
	Pid     int `json:"pid"`
	Members []struct {
		Name    string `json:"name"`
		Address string `json:"address"`
	} `json:"members"`
}

func (nb *netBench) ovInspect(name string) (ovStatus, error) {
	var st ovStatus
	out, err := nb.rn(30*time.Second, "network", "inspect", name)
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	return st, err
}

// udpDrops is the drops counter of pid's UDP socket on local port port
// (/proc/PID/net/udp: its network namespace).
func udpDrops(pid, port int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", pid))
	if err != nil {
		return 0, err
	}
	want := fmt.Sprintf(":%04X", port)
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 12 && strings.HasSuffix(f[1], want) {
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	return 0, fmt.Errorf("no UDP socket on port %d", port)
}

// measureOverlay creates the overlay network on both hosts, measures, and
// removes it.
func (ob *ovBench) measureOverlay() {
	var names [2]string
	var pids [2]int
	for i, nb := range ob.nb {
		self, peer, rng := ovAddrA, ovAddrB, "10.200.0.0/25"
		if i == 1 {
			self, peer, rng = ovAddrB, ovAddrA, "10.200.0.128/25"
		}
		name, st, err := nb.create("--subnet", "10.200.0.0/24", "--ip-range", rng, "--vxlan", self+":4789", "--vni", "42", "--vxlan-peer", peer+":4789")
		defer nb.remove(name)
		if err != nil {
			ob.rec.fail(colOverlay, "all", fmt.Errorf("network create on host %c: %w", 'A'+i, err))
			return
		}
		names[i], pids[i] = name, st.Pid
	}
	seq := 0
	launcher := func(i int) ovLauncher {
		return func(ctx context.Context, role string, argv ...string) *exec.Cmd {
			seq++
			member := fmt.Sprintf("%s%d", role, seq)
			if role == "iperf" || role == "echo" {
				member = role
			}
			return ob.nb[i].cmd(ctx, runArgs([]string{"--network", names[i], "--name", member}, argv...)...)
		}
	}
	addr := func(role string) (string, error) {
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, err := ob.nb[0].ovInspect(names[0])
			if err != nil {
				return "", err
			}
			for _, m := range st.Members {
				if m.Name == role && m.Address != "" {
					return m.Address, nil
				}
			}
			if time.Now().After(deadline) {
				return "", fmt.Errorf("host A's network lists no member %q", role)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Around the throughput run: the receiving socket's drops and both
	// network processes' CPU.
	around := func() func() {
		d0, derr := udpDrops(pids[0], 4789)
		var cpu0 [2]float64
		var cerr [2]error
		for i, p := range pids {
			cpu0[i], cerr[i] = cpuSeconds(p)
		}
		t0 := time.Now()
		return func() {
			el := time.Since(t0).Seconds()
			if d1, err := udpDrops(pids[0], 4789); err == nil && derr == nil {
				ob.rec.add(colOverlay, "drops", d1-d0)
			} else {
				ob.rec.fail(colOverlay, "drops", errors.Join(derr, err))
			}
			for i, p := range pids {
				c1, err := cpuSeconds(p)
				if err != nil || cerr[i] != nil {
					ob.rec.fail(colOverlay, fmt.Sprintf("cpu-%c", 'a'+i), errors.Join(cerr[i], err))
					continue
				}
				ob.rec.add(colOverlay, fmt.Sprintf("cpu-%c", 'a'+i), 100*(c1-cpu0[i])/el)
			}
		}
	}
	ob.measure(colOverlay, launcher(0), launcher(1), addr, around)
}

// runOverlay is the -overlay mode.
func runOverlay(cfg *config, bin string, runs int, addCleanup func(func())) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("-overlay needs root (network namespaces, veth, kernel vxlan)")
	}
	for _, need := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(need); err != nil {
			return "", fmt.Errorf("%s not found (apt-get install iproute2 util-linux)", need)
		}
	}
	// Orphans (daemonized network processes, a member whose run was
	// killed) are reparented to the bench, so that cleanup finds them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return "", fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	ob := &ovBench{cfg: cfg, rec: &recorder{vals: map[[2]string][]float64{}}, tag: fmt.Sprintf("rnbov%d", os.Getpid())}
	addCleanup(ob.cleanup)
	if err := ob.setup(); err != nil {
		return "", fmt.Errorf("host namespaces: %w", err)
	}
	for i := range ob.nb {
		xdg := filepath.Join(cfg.tmp, fmt.Sprintf("xdg-%c", 'a'+i))
		if err := os.Mkdir(xdg, 0o700); err != nil {
			return "", err
		}
		os.Chown(xdg, 65534, 65534)
		ob.nb[i] = &netBench{cfg: cfg, bin: bin, xdg: xdg, netns: ob.hostNS[i], rec: ob.rec, networks: map[string]bool{}}
		addCleanup(ob.nb[i].removeAll)
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	desc := fmt.Sprintf("Machine: %s; load average at the start %s. Tools: %s.", machine(), load, versions(bin))
	steps := []benchStep{
		{"rootlessnet overlay", ob.measureOverlay},
		{"kernel vxlan", ob.measureKernel},
		{"underlay", ob.measureUnderlay},
	}
	start := time.Now()
	interleave(runs, steps)
	return renderOverlay(ob.rec, cfg, runs, desc, time.Since(start)), nil
}

func renderOverlay(rec *recorder, cfg *config, runs int, desc string, elapsed time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Overlay (%s)\n\nMedian of %d runs, iperf3 -t %d. %s\n\n", time.Now().UTC().Format("2006-01-02"), runs, cfg.secs, desc)
	b.WriteString("| figure | rootlessnet overlay | kernel vxlan (ceiling) | underlay veth | rootlessnet/kernel | rootlessnet/underlay |\n|---|---|---|---|---|---|\n")
	for _, f := range ovFigures {
		v := map[string]float64{}
		cell := map[string]string{}
		for _, c := range []string{colOverlay, colKernel, colUnderlay} {
			v[c] = rec.median(c, f.id)
			cell[c] = fmtVal(f.format, v[c])
			if math.IsNaN(v[c]) && len(rec.vals[[2]string{c, f.id}]) == 0 && c != colOverlay && f.loop == "" && !f.lat && f.id != "retr" {
				cell[c] = ""
			}
		}
		rk, ru := "", ""
		if f.loop != "" || f.lat {
			rk, ru = ratio(v[colOverlay], v[colKernel]), ratio(v[colOverlay], v[colUnderlay])
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", f.label, cell[colOverlay], cell[colKernel], cell[colUnderlay], rk, ru)
	}
	fmt.Fprintf(&b, `
Notes (whole run %.0f s):
- Hosts: two network namespaces (ip netns) joined by a veth pair, 192.0.2.1/24 (A) and 192.0.2.2/24 (B), MTU 1500, the veth's default offloads. No checksum offload is turned off: kernel vxlan to kernel vxlan and rootlessnet to rootlessnet need none (the e2e interop test's ethtool -K tx off on host B's veth is for rootlessnet receiving from a kernel vxlan, whose inner checksums would stay partial across a veth; that pairing is not measured here).
- rootlessnet overlay: on each host, as uid 65534 with a state directory of its own, rootlessnet network create --subnet 10.200.0.0/24 --ip-range (A: .0/25, B: .128/25) --vxlan SELF:4789 --vni 42 --vxlan-peer PEER:4789 (members' MTU 1450), a fresh pair each run; servers in members on A, clients in members on B (rootlessnet run --network), by address.
- kernel vxlan (the ceiling, built as root each run): on each host a bridge and ip link add kvx type vxlan id 42 dstport 4789 remote PEER local SELF dev ul on it, and a namespace per "member" with a veth on the bridge at MTU 1450 (A 10.200.0.10, B 10.200.0.140); servers and clients as uid 65534.
- underlay: the servers in host A's namespace, the clients in B's, to 192.0.2.1.
- TCP: iperf3 -c A -t %d from B (data flows B -> A), received rate; retransmits as the sender counts them. Latency: one TCP connection (TCP_NODELAY), 100 warm-up then %d round trips of 64 bytes (the bench's helper: echo on A, latency on B).
- Drops and CPU (rootlessnet only): the drops column of host A's VXLAN socket (port 4789) in /proc/PID/net/udp, and utime+stime of each network process tree, across the TCP run.
- Ratios are rootlessnet/column of the medians; for "lower is better" rows a ratio above 1 favours the column. n/a: the figure failed (reason on stderr).
`, elapsed.Seconds(), cfg.secs, cfg.rtts)
	return b.String()
}
