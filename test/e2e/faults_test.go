package e2e

// Faults and limits: the flow cap, file-descriptor exhaustion, a container
// that exits mid-transfer, a peer that resets mid-stream, a silent DNS
// upstream, API clients that hang or flood, SIGTERM and SIGKILL, and TCP
// keepalive on the host side of forwarded connections. Each runs as the
// unprivileged user (the product is rootless; the root paths are the same
// code).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

func init() {
	// fault-flows ECHO UDPECHO N: hold N connections to ECHO (each with a
	// round trip), print HOLDING, wait for NEXT; then check that more are
	// refused at once (TCP and UDP), that closing one makes room, and
	// print FLOWS ok.
	extraHelpers["fault-flows"] = faultFlows
	// fault-fds ECHO UDPECHO: serve an echo on :8080, print READY, wait for
	// GO, open connections to ECHO until one is refused, check the refusals
	// are prompt (TCP and UDP), print EXHAUSTED, wait for RELEASE, close
	// them, check new flows work (AFTER ok), serve until stdin's EOF.
	extraHelpers["fault-fds"] = faultFDs
	// fault-exit-mid SINK: stream to SINK and exit with status 7 in the
	// middle, without closing anything.
	extraHelpers["fault-exit-mid"] = faultExitMid
	// fault-child-exit-mid SINK: run fault-exit-mid as a child, print
	// its output and CHILD EXITED when it exited with 7, and wait for
	// stdin's EOF (the container lives on).
	extraHelpers["fault-child-exit-mid"] = faultChildExitMid
	// fault-peer-reset ADDR: stream to ADDR, whose server resets after a
	// while: the stream must fail with a reset, promptly.
	extraHelpers["fault-peer-reset"] = faultPeerReset
	// api-flood SOCK: flood the API socket (see apiFlood) until stdin's EOF.
	extraHelpers["api-flood"] = func(args []string) error {
		stop := make(chan struct{})
		go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
		apiFlood(args[0], stop)
		return nil
	}
}

// ---------------------------------------------------------------------
// Container side.

// echoConn dials addr and makes one small round trip.
func echoConn(addr string, i int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := fmt.Appendf(nil, "flow %06d", i)
	got := make([]byte, len(msg))
	if _, err := c.Write(msg); err == nil {
		_, err = io.ReadFull(c, got)
	}
	if err != nil || string(got) != string(msg) {
		c.Close()
		return nil, fmt.Errorf("round trip: %q, %v", got, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// refusedPromptly dials addr and wants ECONNREFUSED within 5 s.
func refusedPromptly(addr string) error {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	el := time.Since(start)
	if err == nil {
		c.Close()
		return errors.New("connected, want refused")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("after %v: %v, want connection refused", el, err)
	}
	if el > 5*time.Second {
		return fmt.Errorf("refused only after %v", el)
	}
	return nil
}

// retryFor retries fn until it succeeds or d has passed.
func retryFor(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

func faultFlows(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: fault-flows ECHO UDPECHO N")
	}
	echo, udp := args[0], args[1]
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	lines := soakLines()
	conns := make([]net.Conn, n)
	defer func() { closeAll(conns) }()
	for i := range conns {
		if conns[i], err = echoConn(echo, i); err != nil {
			return fmt.Errorf("flow %d of %d under the cap: %w", i, n, err)
		}
	}
	fmt.Println("HOLDING", tcpOptions(conns[0]))
	if err := soakWaitLine(lines, "NEXT", time.Minute); err != nil {
		return err
	}
	for i := range 3 {
		if err := refusedPromptly(echo); err != nil {
			return fmt.Errorf("TCP flow %d beyond the cap: %w", i, err)
		}
	}
	if err := udpRefused(udp); err != nil {
		return fmt.Errorf("UDP flow beyond the cap: %w", err)
	}
	// One flow ends: a new one fits.
	conns[0].Close()
	conns[0] = nil
	var extra net.Conn
	if err := retryFor(10*time.Second, func() (err error) { extra, err = echoConn(echo, n); return err }); err != nil {
		return fmt.Errorf("a flow after one ended: %w", err)
	}
	conns[0] = extra
	closeAll(conns)
	clear(conns)
	if err := retryFor(10*time.Second, func() error { return udpEcho(udp) }); err != nil {
		return fmt.Errorf("UDP after the flows ended: %w", err)
	}
	fmt.Println("FLOWS ok")
	return nil
}

// serveEcho echoes every connection on l until l is closed.
func serveEcho(l net.Listener, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			io.Copy(c, c)
		}()
	}
}

func faultFDs(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: fault-fds ECHO UDPECHO")
	}
	echo, udp := args[0], args[1]
	l, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", slirpGuestPort))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go serveEcho(l, &wg)
	defer func() { l.Close(); wg.Wait() }()

	lines := soakLines()
	fmt.Println("READY")
	if err := soakWaitLine(lines, "GO", time.Minute); err != nil {
		return err
	}
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	const most = 1000
	for len(conns) < most {
		start := time.Now()
		c, err := echoConn(echo, len(conns))
		if err == nil {
			conns = append(conns, c)
			continue
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("flow %d: %w (want a round trip or a refusal)", len(conns), err)
		}
		if el := time.Since(start); el > 5*time.Second {
			return fmt.Errorf("flow %d refused only after %v", len(conns), el)
		}
		break
	}
	if len(conns) == most {
		return fmt.Errorf("%d flows and none refused", most)
	}
	for i := range 3 {
		if err := refusedPromptly(echo); err != nil {
			return fmt.Errorf("TCP flow %d with no fds left: %w", i, err)
		}
	}
	if err := udpRefused(udp); err != nil {
		return fmt.Errorf("UDP flow with no fds left: %w", err)
	}
	fmt.Printf("EXHAUSTED held=%d\n", len(conns))
	if err := soakWaitLine(lines, "RELEASE", time.Minute); err != nil {
		return err
	}
	closeAll(conns)
	conns = nil
	if err := retryFor(15*time.Second, func() error {
		c, err := echoConn(echo, 0)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return fmt.Errorf("TCP after fds freed: %w", err)
	}
	if err := retryFor(15*time.Second, func() error { return udpEcho(udp) }); err != nil {
		return fmt.Errorf("UDP after fds freed: %w", err)
	}
	fmt.Println("AFTER ok")
	return soakWaitEOF(lines, time.Minute)
}

func faultExitMid(args []string) error {
	c, err := net.DialTimeout("tcp", args[0], 10*time.Second)
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	opts := tcpOptions(c)
	chunk := pattern(256 << 10)
	for sent := 0; sent < 8<<20; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			return err
		}
	}
	fmt.Println("SENDING", opts)
	os.Exit(7) // mid-transfer, nothing closed
	return nil
}

func faultChildExitMid(args []string) error {
	lines := soakLines()
	child := exec.Command("/proc/self/exe")
	child.Env = append(os.Environ(), helperEnv+"=fault-exit-mid", "RLN_ARGS="+args[0])
	child.Stdout, child.Stderr = os.Stdout, os.Stderr
	err := child.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		return fmt.Errorf("fault-exit-mid: %v, want exit status 7", err)
	}
	fmt.Println("CHILD EXITED")
	return soakWaitEOF(lines, 2*time.Minute)
}

func faultPeerReset(args []string) error {
	c, err := net.DialTimeout("tcp", args[0], 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	opts := tcpOptions(c)
	start := time.Now()
	c.SetDeadline(start.Add(60 * time.Second))
	chunk := pattern(256 << 10)
	for sent := 0; sent < 1<<30; sent += len(chunk) {
		if _, err = c.Write(chunk); err != nil {
			break
		}
	}
	var ne net.Error
	switch {
	case err == nil:
		return errors.New("1 GiB went through a peer that resets")
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("no reset arrived: the write hung")
	case !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("write failed with %v, want a reset", err)
	}
	fmt.Printf("reset after %v %s\n", time.Since(start).Round(time.Millisecond), opts)
	return nil
}

// ---------------------------------------------------------------------
// Test side.

// startRun starts `rootlessnet run [flags] -- helper MODE ARGS` as a
// soakProc (line-wise stdout, stdin for steering). With nofile > 0 it runs
// under `prlimit --nofile=N:N` (soft and hard: Go raises the soft limit to
// the hard one at start), and so does the container it starts.
func (e *env) startRun(t *testing.T, ctx context.Context, nofile int, flags []string, mode string, args ...string) *soakProc {
	t.Helper()
	full := append([]string{"run", "--resolv-conf", e.w.ResolvConf()}, flags...)
	cmd := e.command(ctx, append(full, "--", e.helper)...)
	if nofile > 0 {
		if _, err := exec.LookPath("prlimit"); err != nil {
			t.Skip("prlimit (util-linux) is not installed")
		}
		cmd = e.commandPath(ctx, "prlimit", append([]string{fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--", e.bin}, full...)...)
		cmd.Args = append(cmd.Args, "--", e.helper)
	}
	cmd.Env = append(cmd.Env, helperEnv+"="+mode, "RLN_ARGS="+strings.Join(args, " "))
	p := &soakProc{cmd: cmd, lines: make(chan string, 256), done: make(chan struct{})}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &p.mu, w: &p.stderr}
	if err := e.w.Start(cmd); err != nil {
		t.Fatalf("starting rootlessnet: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *soakProc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// hostSocketTimers returns, for pid's established TCP sockets to port,
// the kernel's timer kind of each (/proc/net/tcp "tr": 2 is keepalive).
func hostSocketTimers(t *testing.T, pid int, port uint16) []string {
	t.Helper()
	own := map[string]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil {
			if ino, ok := strings.CutPrefix(target, "socket:["); ok {
				own[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	var timers []string
	suffix := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "01" || !strings.HasSuffix(f[2], suffix) || !own[f[9]] {
			continue
		}
		tr, _, _ := strings.Cut(f[5], ":")
		timers = append(timers, tr)
	}
	return timers
}

// TestFaultFlowCap: with --max-flows N, flow N+1 is refused at once (RST,
// ICMP port unreachable) with one warning, and service resumes as soon as
// a flow ends. The host sockets of the held flows have TCP keepalive on.
func TestFaultFlowCap(t *testing.T) {
	forEachTCPPath(t, unprivilegedOnly, testFaultFlowCap)
}

func testFaultFlowCap(t *testing.T, e *env, tcp []string) {
	const n = 12
	echo := startSoakServer(t, e.w, "198.51.100.1:0", smallEcho)
	udp := e.w.UDPEcho(t, "198.51.100.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := e.startRun(t, ctx, 0, withFlags(tcp, "--max-flows", strconv.Itoa(n)), "fault-flows", echo, udp.String(), strconv.Itoa(n))
	checkCarrier(t, tcp, p.waitLine(t, "HOLDING", time.Minute))

	_, portStr, _ := strings.Cut(echo, ":")
	port, _ := strconv.Atoi(portStr)
	timers := hostSocketTimers(t, p.cmd.Process.Pid, uint16(port))
	if len(timers) != n {
		t.Errorf("rootlessnet holds %d established sockets to the echo server, want %d", len(timers), n)
	}
	for _, tr := range timers {
		if tr != "02" {
			t.Errorf("host socket timers %v: want keepalive (02) on each", timers)
			break
		}
	}
	io.WriteString(p.stdin, "NEXT\n")
	p.waitLine(t, "FLOWS ok", time.Minute)
	p.finish(t)
	stderr := p.stderrText()
	t.Logf("rootlessnet stderr:\n%s", stderr)
	if c := strings.Count(stderr, "flow limit reached"); c != 1 {
		t.Errorf("%d flow-limit warnings, want one for the episode\n%s", c, stderr)
	}
}

// cpuTime returns pid's user+system CPU time.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name in parentheses; utime and stime are
	// the 14th and 15th of the whole line.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// TestFaultFDExhaustion: rootlessnet runs out of file descriptors (started
// under a low RLIMIT_NOFILE; the container has the same limit but far fewer
// fds open at start, so rootlessnet runs out first). New flows are refused promptly (RST,
// ICMP), with one warning; a client of a published port waits in the
// backlog without the accept loop spinning or giving up; once the
// container's connections close, everything works again.
func TestFaultFDExhaustion(t *testing.T) {
	e := newEnv(t, world.Nobody)
	echo := startSoakServer(t, e.w, "198.51.100.1:0", smallEcho)
	udp := e.w.UDPEcho(t, "198.51.100.1:0")
	pubPort := e.slirpFreePort(t, "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const nofile = 96
	p := e.startRun(t, ctx, nofile, []string{"-p", fmt.Sprintf("127.0.0.1:%d:%d", pubPort, slirpGuestPort)}, "fault-fds", echo, udp.String())
	pid := p.cmd.Process.Pid
	p.waitLine(t, "READY", time.Minute)
	time.Sleep(300 * time.Millisecond) // let start-up settle
	t.Logf("rootlessnet under RLIMIT_NOFILE %d: %v", nofile, mustSample(t, pid))

	io.WriteString(p.stdin, "GO\n")
	line := p.waitLine(t, "EXHAUSTED", 2*time.Minute)
	t.Logf("container: %s; rootlessnet: %v", line, mustSample(t, pid))

	// A client of the published port: the kernel completes its handshake
	// into the backlog, rootlessnet cannot accept it yet.
	var client net.Conn
	if err := e.w.Do(func() (err error) {
		client, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", pubPort), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dialing the published port: %v", err)
	}
	defer client.Close()
	if _, err := client.Write([]byte("published\n")); err != nil {
		t.Fatal(err)
	}
	cpu0, wall0 := cpuTime(t, pid), time.Now()
	time.Sleep(3 * time.Second)
	cpu, wall := cpuTime(t, pid)-cpu0, time.Since(wall0)
	t.Logf("rootlessnet used %v of CPU in %v while out of fds with a client waiting", cpu, wall.Round(time.Millisecond))
	if cpu > wall/2 {
		t.Errorf("rootlessnet used %v of CPU in %v out of fds: spinning", cpu, wall)
	}

	io.WriteString(p.stdin, "RELEASE\n")
	p.waitLine(t, "AFTER ok", time.Minute)
	client.SetDeadline(time.Now().Add(15 * time.Second))
	got, err := bufio.NewReader(client).ReadString('\n')
	if err != nil || got != "published\n" {
		t.Errorf("the published port's waiting client got %q, %v after fds freed\n%s", got, err, p.output())
	}
	client.Close()
	t.Logf("rootlessnet after: %v", mustSample(t, pid))
	// The episode is reported over a second after the last refusal.
	retryFor(5*time.Second, func() error {
		if !strings.Contains(p.stderrText(), "file descriptors available again") {
			return errors.New("not yet")
		}
		return nil
	})
	p.finish(t)
	stderr := p.stderrText()
	if c := strings.Count(stderr, "out of file descriptors"); c != 1 {
		t.Errorf("%d fd-exhaustion warnings, want one for the episode\n%s", c, stderr)
	}
	if !strings.Contains(stderr, "file descriptors available again") {
		t.Errorf("no line saying the episode ended\n%s", stderr)
	}
	if c := strings.Count(stderr, "published port cannot accept"); c != 1 {
		t.Errorf("%d accept warnings, want one\n%s", c, stderr)
	}
	if strings.Contains(stderr, "stopped accepting") || strings.Contains(stderr, "panic") {
		t.Errorf("published port gave up or rootlessnet panicked\n%s", stderr)
	}
}

// TestFaultContainerExitsMidTransfer: the container's process exits in the
// middle of a stream; rootlessnet returns its status at once and the
// world's end of the stream is closed. Then a process exits mid-stream in
// a container that lives on: rootlessnet closes the flow's host socket
// and the world's end sees the stream end, whether the container's kernel
// ends the orphaned connection with a FIN after its data, or resets it
// (the process left data unread).
func TestFaultContainerExitsMidTransfer(t *testing.T) {
	forEachTCPPath(t, unprivilegedOnly, func(t *testing.T, e *env, tcp []string) {
		ended := make(chan error, 1)
		sink := startSoakServer(t, e.w, "198.51.100.1:0", func(c *net.TCPConn) {
			_, err := io.Copy(io.Discard, plainConn{c})
			ended <- err
		})
		start := time.Now()
		r := e.run(tcp, "fault-exit-mid", sink)
		t.Logf("rootlessnet returned %d after %v", r.status, time.Since(start).Round(time.Millisecond))
		if r.status != 7 || !strings.Contains(r.stdout, "SENDING") {
			t.Fatalf("status %d, want the command's 7\nstdout:\n%s\nstderr:\n%s", r.status, r.stdout, r.stderr)
		}
		checkCarrier(t, tcp, r.stdout)
		select {
		case err := <-ended:
			t.Logf("the world's end saw the stream end with %v", err)
		case <-time.After(15 * time.Second):
			t.Fatal("the world's end of the stream is still open 15 s after rootlessnet exited")
		}

		for _, tc := range []struct {
			name     string
			greeting bool // the server sends first: the container's process leaves it unread
		}{{"fin", false}, {"reset", true}} {
			type end struct {
				n   int64
				err error
			}
			ended := make(chan end, 1)
			sink := startSoakServer(t, e.w, "198.51.100.1:0", func(c *net.TCPConn) {
				if tc.greeting {
					c.Write([]byte("hello\n"))
				}
				n, err := io.Copy(io.Discard, plainConn{c})
				ended <- end{n, err}
			})
			_, portStr, _ := strings.Cut(sink, ":")
			port, _ := strconv.Atoi(portStr)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			p := e.startRun(t, ctx, 0, tcp, "fault-child-exit-mid", sink)
			checkCarrier(t, tcp, p.waitLine(t, "SENDING", time.Minute))
			p.waitLine(t, "CHILD EXITED", time.Minute)
			select {
			case got := <-ended:
				t.Logf("%s: the world's end saw the stream end after %d bytes with %v", tc.name, got.n, got.err)
				// What the process wrote before it exited is in its
				// kernel, which sends it all and then a FIN.
				if !tc.greeting && (got.n != 8<<20 || got.err != nil) {
					t.Errorf("%s: the world received %d bytes and %v; want the 8 MiB written and EOF", tc.name, got.n, got.err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("%s: the world's end of the stream is still open 15 s after the process exited\nrootlessnet's sockets to it:\n%s\n%s",
					tc.name, hostSocketsTo(p.cmd.Process.Pid, port), p.output())
			}
			var left string
			retryFor(15*time.Second, func() error {
				if left = hostSocketsTo(p.cmd.Process.Pid, port); left != "" {
					return errors.New("not yet")
				}
				return nil
			})
			if left != "" {
				t.Errorf("%s: 15 s after the process exited, rootlessnet still holds a socket to the world's end:\n%s\n%s", tc.name, left, p.output())
			}
			p.finish(t)
		}
	})
}

// TestFaultPeerResetMidStream: the world's server resets in the middle of
// a stream; the container's writes fail with a reset, promptly.
func TestFaultPeerResetMidStream(t *testing.T) {
	forEachTCPPath(t, unprivilegedOnly, func(t *testing.T, e *env, tcp []string) {
		rst := startSoakServer(t, e.w, "198.51.100.1:0", func(c *net.TCPConn) {
			io.CopyN(io.Discard, plainConn{c}, 4<<20)
			c.SetLinger(0)
		})
		out := e.mustTCP(tcp, nil, "fault-peer-reset", rst)
		t.Logf("container: %s", strings.TrimSpace(out))
	})
}

// hostSocketsTo lists pid's TCP sockets (any state) whose remote port is
// port, as lines of /proc/PID/net/tcp{,6}.
func hostSocketsTo(pid, port int) string {
	suffix := fmt.Sprintf(":%04X", port)
	var out []string
	for _, line := range strings.Split(tcpSocketsOf(pid), "\n") {
		// "tcp: sl local rem st ...": the remote address is the 4th field.
		if f := strings.Fields(line); len(f) > 3 && strings.HasSuffix(f[3], suffix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestFaultDNSSilentUpstream: an upstream that never answers (a bound
// socket, no reply, no ICMP) gives SERVFAIL within the client's 5 s.
func TestFaultDNSSilentUpstream(t *testing.T) {
	e := newEnv(t, world.Nobody)
	silent, err := e.w.ListenPacket("udp", "198.51.100.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	resolv := filepath.Join(e.scratch, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 198.51.100.1\n"), 0o644)
	out := e.mustOK([]string{"--resolv-conf", resolv}, "dns", "10.0.2.3:53", world.DNSName)
	for _, want := range []string{"udp rcode=SERVFAIL", "tcp rcode=SERVFAIL"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q:\n%s", want, out)
		}
	}
}

// apiFlood opens silent connections and oversized requests to the API
// socket, about a thousand a second, until stop is closed; it returns when
// all are closed.
func apiFlood(sock string, stop <-chan struct{}) {
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	big := make([]byte, 16<<10)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if len(conns) >= 300 {
			closeAll(conns[:100])
			conns = append([]net.Conn(nil), conns[100:]...)
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		time.Sleep(time.Millisecond)
		if i%3 == 0 {
			c.Write(big)
		}
		conns = append(conns, c)
	}
}

// TestFaultAPIAndSignals: in the attach form with an API socket, a process
// flooding the socket and holding connections does not block another's
// requests; SIGTERM
// exits 0 and removes the socket; after a SIGKILL, which leaves the socket
// file behind, a new instance starts on the same path.
func TestFaultAPIAndSignals(t *testing.T) {
	e := newEnv(t, world.Nobody)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	pid, cp, ctrIn := e.slirpContainer(t, ctx)
	sock := filepath.Join(e.scratch, "api.sock")
	start := func() *slirpProc {
		rn := e.command(ctx, "--netns", fmt.Sprintf("/proc/%d/ns/net", pid), "--resolv-conf", e.w.ResolvConf(), "-a", sock)
		p := e.slirpStart(t, rn)
		if err := retryFor(20*time.Second, func() error { _, _, err := slirpAPICall(sock, `{"execute":"list_hostfwd"}`); return err }); err != nil {
			t.Fatalf("the API never answered: %v\n%s", err, p.output())
		}
		return p
	}
	// whoami publishes a port through the API and reaches the container.
	whoami := func(p *slirpProc) {
		t.Helper()
		port := e.slirpFreePort(t, "127.0.0.1")
		slirpAddHostfwd(t, sock, "127.0.0.1", port, slirpGuestPort)
		got, err := e.slirpWhoamiRetry(fmt.Sprintf("127.0.0.1:%d", port), 20*time.Second)
		if err != nil || !strings.HasPrefix(got, "10.0.2.2:") {
			t.Fatalf("through the published port: %q, %v\n%s", got, err, p.output())
		}
	}

	p1 := start()
	if !cp.stdout.waitFor("READY", cp, 20*time.Second) {
		t.Fatalf("the container never saw tap0 configured\n%s\n%s", cp.output(), p1.output())
	}
	flood := exec.CommandContext(ctx, e.helper)
	flood.Env = []string{helperEnv + "=api-flood", "RLN_ARGS=" + sock}
	floodIn, err := flood.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { floodIn.Close(); flood.Wait() })
	time.Sleep(time.Second) // the flood is on
	for i := range 5 {
		t0 := time.Now()
		if _, _, err := slirpAPICall(sock, `{"execute":"list_hostfwd"}`); err != nil {
			t.Fatalf("API call %d during the flood: %v\n%s", i, err, p1.output())
		}
		if el := time.Since(t0); el > 3*time.Second {
			t.Errorf("API call %d took %v during the flood", i, el)
		}
	}
	whoami(p1)
	floodIn.Close()
	if err := flood.Wait(); err != nil {
		t.Errorf("flooder: %v", err)
	}
	if !strings.Contains(p1.stderr.String(), "dropping the oldest of the busiest client") {
		t.Errorf("the flood never reached the bound of waited-on connections\n%s", p1.output())
	}

	// SIGTERM: status 0, socket removed.
	p1.cmd.Process.Signal(syscall.SIGTERM)
	if status, ok := p1.wait(10 * time.Second); !ok || status != 0 {
		t.Fatalf("after SIGTERM: status %d (exited %v), want 0\n%s", status, ok, p1.output())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket left after SIGTERM: %v", err)
	}

	// SIGKILL leaves the socket file; the next instance replaces it.
	p2 := start()
	p2.cmd.Process.Kill()
	p2.wait(10 * time.Second)
	if _, err := os.Lstat(sock); err != nil {
		t.Logf("no socket file after SIGKILL (%v): nothing stale to replace", err)
	}
	p3 := start()
	whoami(p3)
	p3.cmd.Process.Signal(syscall.SIGTERM)
	if status, ok := p3.wait(10 * time.Second); !ok || status != 0 {
		t.Fatalf("after SIGTERM: status %d (exited %v), want 0\n%s", status, ok, p3.output())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket left after SIGTERM: %v", err)
	}

	ctrIn.Close()
	if status, ok := cp.wait(15 * time.Second); !ok || status != 0 {
		t.Errorf("container: status %d (exited %v)\n%s", status, ok, cp.output())
	}
}
