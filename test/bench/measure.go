package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// config is what every session needs.
type config struct {
	secs      int     // seconds per iperf3 run
	hostPort  int     // the host iperf3 server on 127.0.0.1
	helper    string  // the bench binary, executable by anyone
	tmp       string  // scratch directory, removed at the end
	rtts      int     // latency round trips
	connSecs  float64 // seconds of the connection-rate loop
	holdConns int     // connections held for the RSS figure
	udpRate   string  // iperf3 -b for UDP
	// figures selects what to measure (empty: everything).
	figures map[string]bool
	// profileDir receives rootlessnet's CPU and allocation profiles.
	profileDir string
	sessions   int // sessions started, for profile names
}

// want: fig is selected by -figures (an id, or a pattern with * such as
// udp-out-*).
func (c *config) want(fig string) bool {
	if len(c.figures) == 0 || c.figures[fig] {
		return true
	}
	for f := range c.figures {
		if strings.ContainsAny(f, "*?[") {
			if ok, _ := path.Match(f, fig); ok {
				return true
			}
		}
	}
	return false
}

func (c *config) wantAny(figs ...string) bool {
	for _, f := range figs {
		if c.want(f) {
			return true
		}
	}
	return false
}

// session is one namespace served by one tool.
type session struct {
	t        *tool
	kind     string
	seq      int // session number, for profile names
	mtu      int
	pid      int // the namespace's process
	stack    *proc
	gw       string
	hostPort int    // published port on 127.0.0.1 (0: none)
	bypass   bool   // publish with --port-bypass (kindBypass)
	dir      string // scratch directory readable by uid 65534
	stderr   *tailBuffer
	// pubUDP: publish hostPort for UDP too (-udp).
	pubUDP bool
	// resolvConf: the tool's nameservers come from this file (-dns).
	resolvConf string
}

// sessionOpts are what a session asks of its tool beyond the namespace.
type sessionOpts struct {
	mtu     int  // 0: 65520
	publish bool // publish a free host port to guest port 5201
	pubUDP  bool // for UDP too
	bypass  bool
	// resolvConf: the content of a resolv.conf for the tool ("": the
	// host's).
	resolvConf string
}

// Session kinds: each serves a fresh namespace, so that one figure's
// leftovers (1500 closed connections, grown buffers) do not weigh on the
// next.
const (
	kindRSS  = "rss"  // RSS idle and with cfg.holdConns connections, MTU 65520
	kindMain = "main" // everything else at MTU 65520
	kind1500 = "1500" // TCP throughput at MTU 1500
	// kindBypass: the published port with --port-bypass, MTU 65520;
	// rootlessnet only (the flag makes every TCP forward bypass, hence a
	// session of its own).
	kindBypass = "bypass"
)

var kindFigures = map[string][]string{
	kindRSS:    {"rss-idle", "rss-hold"},
	kindMain:   {"tcp-out-65520", "tcp-in-65520", "cpu-out", "cpu-in", "pub-in", "pub-out", "udp-out", "udp-loss", "udp-in", "udp-in-loss", "lat-p50", "lat-p99", "connrate", "pub-lat-p50", "pub-lat-p99"},
	kind1500:   {"tcp-out-1500", "tcp-in-1500"},
	kindBypass: {"pub-in-bypass", "pub-out-bypass"},
}

// runSession serves a fresh namespace with t and records the figures of
// kind; a failure costs only the figures it concerns.
func runSession(cfg *config, t *tool, kind string, rec *recorder) {
	if kind == kindBypass && !t.bypass {
		return // the peers have no such path: n/a
	}
	mtu := 65520
	if kind == kind1500 {
		mtu = 1500
	}
	opts := sessionOpts{mtu: mtu, bypass: kind == kindBypass}
	opts.publish = kind == kindMain && cfg.wantAny("pub-in", "pub-out", "pub-lat-p50", "pub-lat-p99") || kind == kindBypass
	s, done, err := openSession(cfg, t, kind, opts)
	if err != nil {
		rec.fail(t.name, strings.Join(kindFigures[kind], ", "), err)
		return
	}
	defer done()
	switch kind {
	case kindRSS:
		time.Sleep(500 * time.Millisecond)
		if v, err := rssMiB(s.stack.pid()); err != nil {
			rec.fail(t.name, "rss-idle", err)
		} else {
			rec.add(t.name, "rss-idle", v)
		}
		if cfg.want("rss-hold") {
			withEcho(s, rec, []string{"rss-hold"}, func(addr string) { measureHold(cfg, s, addr, rec) })
		}
	case kindMain:
		if cfg.wantAny("lat-p50", "lat-p99", "connrate") {
			withEcho(s, rec, []string{"lat-p50", "lat-p99", "connrate"}, func(addr string) {
				if cfg.wantAny("lat-p50", "lat-p99") {
					measureLatency(cfg, s, addr, rec)
				}
				if cfg.want("connrate") {
					measureConnRate(cfg, s, addr, rec)
				}
			})
		}
		if cfg.wantAny("tcp-out-65520", "tcp-in-65520", "cpu-out", "cpu-in") {
			measureTCP(cfg, s, rec, true)
		}
		if cfg.wantAny("pub-in", "pub-out") {
			measurePublished(cfg, s, rec, "")
		}
		if cfg.wantAny("pub-lat-p50", "pub-lat-p99") {
			measurePublishedLatency(cfg, s, rec)
		}
		if cfg.wantAny("udp-out", "udp-loss") {
			measureUDP(cfg, s, rec, "udp-out", "udp-loss")
		}
		if cfg.wantAny("udp-in", "udp-in-loss") {
			measureUDP(cfg, s, rec, "udp-in", "udp-in-loss", "-R")
		}
	case kind1500:
		measureTCP(cfg, s, rec, false)
	case kindBypass:
		measurePublished(cfg, s, rec, "-bypass")
	}
}

// openSession serves a fresh namespace with t; done stops the tool and
// the namespace and removes the session's directory.
func openSession(cfg *config, t *tool, kind string, opts sessionOpts) (s *session, done func(), err error) {
	var undo []func()
	done = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			done()
		}
	}()
	if t.bin != "" {
		if _, err := exec.LookPath(t.bin); err != nil {
			return nil, nil, err
		}
	}
	if opts.mtu == 0 {
		opts.mtu = 65520
	}
	dir, err := os.MkdirTemp(cfg.tmp, t.name+"-")
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		os.Chown(dir, 65534, 65534)
	}
	ns, err := startNamespace()
	if err != nil {
		return nil, nil, fmt.Errorf("namespace: %w", err)
	}
	undo = append(undo, func() { ns.stop(time.Second) })

	cfg.sessions++
	s = &session{t: t, kind: kind, seq: cfg.sessions, mtu: opts.mtu, pid: ns.pid(), dir: dir, stderr: &tailBuffer{}, bypass: opts.bypass, pubUDP: opts.pubUDP}
	if opts.resolvConf != "" {
		s.resolvConf = filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(s.resolvConf, []byte(opts.resolvConf), 0o644); err != nil {
			return nil, nil, err
		}
	}
	if opts.publish {
		if s.hostPort, err = freePort(); err != nil {
			return nil, nil, err
		}
	}
	s.stack, err = t.start(s)
	if err != nil {
		return nil, nil, fmt.Errorf("start: %w", err)
	}
	undo = append(undo, func() { s.stack.stop(3 * time.Second) })
	s.gw = t.gateway
	if s.gw == "" {
		if s.gw, err = defaultGateway(s.pid); err != nil {
			return nil, nil, err
		}
	}
	return s, done, nil
}

// withEcho runs f with the address (through the gateway) of a fresh echo
// server on the host's 127.0.0.1.
func withEcho(s *session, rec *recorder, figs []string, f func(addr string)) {
	echo, err := newEchoServer("127.0.0.1:0")
	if err != nil {
		for _, fig := range figs {
			rec.fail(s.t.name, fig, err)
		}
		return
	}
	defer echo.close()
	f(net.JoinHostPort(s.gw, fmt.Sprint(echo.port())))
}

// measureTCP runs iperf3 in the namespace against the host's server on
// 127.0.0.1 through the gateway, both ways, and with cpu the CPU seconds
// of the stack per GB received.
func measureTCP(cfg *config, s *session, rec *recorder, cpu bool) {
	for _, dir := range []string{"out", "in"} {
		fig := fmt.Sprintf("tcp-%s-%d", dir, s.mtu)
		args := []string{"-c", s.gw, "-p", fmt.Sprint(cfg.hostPort), "-t", fmt.Sprint(cfg.secs)}
		if dir == "in" {
			args = append(args, "-R")
		}
		cpu0, cerr := cpuSeconds(s.stack.pid())
		r, err := iperfNS(s.pid, cfg.secs, args...)
		cpu1, cerr2 := cpuSeconds(s.stack.pid())
		if err != nil {
			rec.fail(s.t.name, fig, err)
			if cpu {
				rec.fail(s.t.name, "cpu-"+dir, err)
			}
			continue
		}
		rec.add(s.t.name, fig, r.End.SumReceived.BitsPerSecond/1e9)
		if !cpu {
			continue
		}
		switch {
		case cerr != nil || cerr2 != nil:
			rec.fail(s.t.name, "cpu-"+dir, fmt.Errorf("cpu: %v %v", cerr, cerr2))
		case r.End.SumReceived.Bytes <= 0:
			rec.fail(s.t.name, "cpu-"+dir, fmt.Errorf("no bytes moved"))
		default:
			rec.add(s.t.name, "cpu-"+dir, (cpu1-cpu0)/(r.End.SumReceived.Bytes/1e9))
		}
	}
}

// measureUDP: iperf3 -u from the namespace to the host's server, or the
// other way with -R; the figures are the receiver's.
func measureUDP(cfg *config, s *session, rec *recorder, rate, loss string, extra ...string) {
	args := append([]string{"-c", s.gw, "-p", fmt.Sprint(cfg.hostPort), "-t", fmt.Sprint(cfg.secs), "-u", "-b", cfg.udpRate, "-l", "1400"}, extra...)
	r, err := iperfNS(s.pid, cfg.secs, args...)
	if err != nil {
		rec.fail(s.t.name, rate, err)
		rec.fail(s.t.name, loss, err)
		return
	}
	rec.add(s.t.name, rate, r.End.SumReceived.BitsPerSecond/1e9)
	rec.add(s.t.name, loss, r.End.SumReceived.LostPercent)
}

// startNamespace starts a process in new user and network namespaces
// (uid 65534 mapped to root when run as root) and waits until they exist.
func startNamespace() (*proc, error) {
	p, err := startProc(unprivileged(exec.Command("unshare", "--user", "--map-root-user", "--net", "sleep", "900")))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.pid()))
		if strings.TrimSpace(string(b)) == "sleep" {
			return p, nil
		}
		if p.exited() || time.Now().After(deadline) {
			p.stop(time.Second)
			return nil, fmt.Errorf("unshare did not set up the namespaces: %v", p.err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

type iperfResult struct {
	End struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
			LostPercent   float64 `json:"lost_percent"`
		} `json:"sum_received"`
		// SumSent: the sender's side (UDP: its rate is what was
		// offered).
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_sent"`
	} `json:"end"`
	Error string `json:"error"`
}

func parseIperf(out []byte, runErr error) (*iperfResult, error) {
	var r iperfResult
	jerr := json.Unmarshal(out, &r)
	if r.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", r.Error)
	}
	if runErr != nil {
		return nil, runErr
	}
	if jerr != nil {
		return nil, fmt.Errorf("iperf3 output: %v", jerr)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return nil, fmt.Errorf("iperf3: nothing received")
	}
	return &r, nil
}

// iperfNS runs an iperf3 client inside the namespace of pid.
func iperfNS(pid, secs int, args ...string) (*iperfResult, error) {
	return iperfNSWithin(pid, time.Duration(secs+20)*time.Second, args...)
}

// iperfNSWithin is iperfNS killed after timeout.
func iperfNSWithin(pid int, timeout time.Duration, args ...string) (*iperfResult, error) {
	args = append([]string{"iperf3"}, append(args, "-J", "--connect-timeout", "5000")...)
	out, err := output(timeout, "nsenter", nsenterArgs(pid, args...)...)
	return parseIperf(out, err)
}

// iperfHost runs an iperf3 client in the host's namespace.
func iperfHost(secs int, args ...string) (*iperfResult, error) {
	return iperfHostWithin(time.Duration(secs+20)*time.Second, args...)
}

// iperfHostWithin is iperfHost killed after timeout.
func iperfHostWithin(timeout time.Duration, args ...string) (*iperfResult, error) {
	out, err := output(timeout, "iperf3", append(args, "-J", "--connect-timeout", "5000")...)
	return parseIperf(out, err)
}

// measurePublished runs iperf3's server inside the namespace on port 5201
// and a host client against the published 127.0.0.1 port, both ways, and
// records pub-in and pub-out with suffix appended to the ids.
func measurePublished(cfg *config, s *session, rec *recorder, suffix string) {
	srv, _, err := startWithLine(exec.Command("nsenter", nsenterArgs(s.pid, "iperf3", "-s", "--forceflush", "-p", fmt.Sprint(guestPort))...), "listening", 10*time.Second)
	if err != nil {
		rec.fail(s.t.name, "pub-in"+suffix, err)
		rec.fail(s.t.name, "pub-out"+suffix, err)
		return
	}
	defer srv.stop(time.Second)
	for _, dir := range []string{"in", "out"} {
		args := []string{"-c", "127.0.0.1", "-p", fmt.Sprint(s.hostPort), "-t", fmt.Sprint(cfg.secs)}
		if dir == "out" {
			args = append(args, "-R")
		}
		r, err := iperfHost(cfg.secs, args...)
		if err != nil {
			rec.fail(s.t.name, "pub-"+dir+suffix, err)
			continue
		}
		rec.add(s.t.name, "pub-"+dir+suffix, r.End.SumReceived.BitsPerSecond/1e9)
	}
}

// measurePublishedLatency runs an echo server inside the namespace on the
// guest port and round trips from this process to the published port.
func measurePublishedLatency(cfg *config, s *session, rec *recorder) {
	fail := func(err error) {
		rec.fail(s.t.name, "pub-lat-p50", err)
		rec.fail(s.t.name, "pub-lat-p99", err)
	}
	srv, _, err := startWithLine(helperCmd(context.Background(), s, cfg, "echo", fmt.Sprint(guestPort)), "listening", 10*time.Second)
	if err != nil {
		fail(err)
		return
	}
	defer srv.stop(time.Second)
	r, err := roundTrips(net.JoinHostPort("127.0.0.1", fmt.Sprint(s.hostPort)), cfg.rtts, 64)
	if err != nil {
		fail(err)
		return
	}
	rec.add(s.t.name, "pub-lat-p50", r.P50us)
	rec.add(s.t.name, "pub-lat-p99", r.P99us)
}

// helperCmd runs the bench binary inside the namespace as a client.
func helperCmd(ctx context.Context, s *session, cfg *config, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, "nsenter", nsenterArgs(s.pid, append([]string{cfg.helper}, args...)...)...)
	c.Env = append(os.Environ(), helperEnv+"=1")
	return c
}

func runHelper(s *session, cfg *config, timeout time.Duration, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := runOutput(ctx, helperCmd(ctx, s, cfg, args...))
	if err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

func measureLatency(cfg *config, s *session, addr string, rec *recorder) {
	var r latencyResult
	if err := runHelper(s, cfg, 60*time.Second, &r, "latency", addr, fmt.Sprint(cfg.rtts), "64"); err != nil {
		rec.fail(s.t.name, "lat-p50", err)
		rec.fail(s.t.name, "lat-p99", err)
		return
	}
	rec.add(s.t.name, "lat-p50", r.P50us)
	rec.add(s.t.name, "lat-p99", r.P99us)
}

func measureConnRate(cfg *config, s *session, addr string, rec *recorder) {
	var r connRateResult
	if err := runHelper(s, cfg, time.Duration(cfg.connSecs*float64(time.Second))+30*time.Second, &r, "connrate", addr, fmt.Sprint(cfg.connSecs)); err != nil {
		rec.fail(s.t.name, "connrate", err)
		return
	}
	if r.Err != "" {
		fmt.Fprintf(os.Stderr, "bench: %s: connection rate: stopped after %d connections: %s\n", s.t.name, r.Conns, r.Err)
	}
	rec.add(s.t.name, "connrate", float64(r.Conns)/r.Seconds)
}

// measureHold has the in-namespace client open cfg.holdConns connections
// to the host echo server, reads the stack's RSS while they are open, then
// lets the client close them.
func measureHold(cfg *config, s *session, addr string, rec *recorder) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := helperCmd(ctx, s, cfg, "hold", addr, fmt.Sprint(cfg.holdConns))
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		rec.fail(s.t.name, "rss-hold", err)
		return
	}
	defer stdinW.Close()
	c.Stdin = stdinR
	lr, w, err := newLineReader()
	if err != nil {
		stdinR.Close()
		rec.fail(s.t.name, "rss-hold", err)
		return
	}
	c.Stdout = w
	stderr := &tailBuffer{}
	c.Stderr = stderr
	p, err := startProc(c)
	stdinR.Close()
	w.Close()
	if err != nil {
		rec.fail(s.t.name, "rss-hold", err)
		return
	}
	defer p.stop(2 * time.Second)
	t0 := time.Now()
	line, err := lr.waitFor("held", 75*time.Second)
	if err != nil {
		rec.fail(s.t.name, "rss-hold", fmt.Errorf("hold: %v: %s", err, stderr.tail()))
		return
	}
	var r holdResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		rec.fail(s.t.name, "rss-hold", err)
		return
	}
	if r.Held < cfg.holdConns {
		fmt.Fprintf(os.Stderr, "bench: %s: held %d of %d connections: %s\n", s.t.name, r.Held, cfg.holdConns, r.Err)
	}
	if verbose {
		fmt.Fprintf(os.Stderr, "bench: %s: %d connections open after %.1f s\n", s.t.name, r.Held, time.Since(t0).Seconds())
	}
	time.Sleep(500 * time.Millisecond)
	v, err := rssMiB(s.stack.pid())
	if err != nil {
		rec.fail(s.t.name, "rss-hold", err)
		return
	}
	rec.add(s.t.name, "rss-hold", v)
	rec.add(s.t.name, "held", float64(r.Held))
	stdinW.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}
