package e2e

// The slirp4netns contract (docs/slirp4netns-compat.md) end to end:
// rootlesskit driving rootlessnet as its slirp4netns binary, the
// slirp4netns command line form with its ready and exit fds, published
// ports keeping the client's source address, and the JSON API socket.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

// slirpOutput collects a process's output; it can be read while the
// process runs.
type slirpOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *slirpOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *slirpOutput) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls until the output contains s, the process ended, or
// timeout passed.
func (b *slirpOutput) waitFor(s string, p *slirpProc, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(b.String(), s) {
			return true
		}
		if p != nil && p.exited() {
			return strings.Contains(b.String(), s)
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slirpProc is a background process started in the world. A cleanup kills and
// reaps it if the test did not.
type slirpProc struct {
	cmd            *exec.Cmd
	stdout, stderr *slirpOutput
	done           chan struct{}
	err            error
}

func (e *env) slirpStart(t *testing.T, cmd *exec.Cmd) *slirpProc {
	t.Helper()
	p := &slirpProc{cmd: cmd, stdout: &slirpOutput{}, stderr: &slirpOutput{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := e.w.Start(cmd); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			cmd.Process.Kill()
		}
		<-p.done
	})
	return p
}

func (p *slirpProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to timeout; ok is false on timeout.
func (p *slirpProc) wait(timeout time.Duration) (status int, ok bool) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, false
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0, true
	case errors.As(p.err, &ee):
		return ee.ExitCode(), true
	default:
		return -1, true
	}
}

func (p *slirpProc) output() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", p.stdout, p.stderr)
}

// slirpFreePort asks the world's kernel for a TCP port free on addr.
func (e *env) slirpFreePort(t *testing.T, addr string) int {
	t.Helper()
	l, err := e.w.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// whoami dials addr inside the world (from local when not empty) and
// returns what the server wrote.
func (e *env) slirpWhoami(addr, local string) (string, error) {
	var c net.Conn
	err := e.w.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if len(b) == 0 {
		return "", errors.New("connection closed with no reply")
	}
	return strings.TrimSpace(string(b)), nil
}

// slirpWhoamiRetry retries whoami until a reply or timeout (forwards that a
// client adds after the container is up).
func (e *env) slirpWhoamiRetry(addr string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		got, err := e.slirpWhoami(addr, "")
		if err == nil || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// slirpAPICall sends one request to the API socket and decodes the reply.
func slirpAPICall(path, req string) (map[string]any, string, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		return nil, "", err
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, string(b), err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, string(b), fmt.Errorf("reply %q: %w", b, err)
	}
	return m, string(b), nil
}

// slirpAddHostfwd adds a TCP forward and returns its id.
func slirpAddHostfwd(t *testing.T, sock, hostAddr string, hostPort, guestPort int) int {
	t.Helper()
	req := fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":%q,"host_port":%d,"guest_addr":"","guest_port":%d}}`, hostAddr, hostPort, guestPort)
	m, raw, err := slirpAPICall(sock, req)
	if err != nil {
		t.Fatalf("add_hostfwd: %v", err)
	}
	ret, _ := m["return"].(map[string]any)
	id, ok := ret["id"].(float64)
	if !ok || id < 1 {
		t.Fatalf("add_hostfwd replied %s, want {\"return\":{\"id\":N}}", raw)
	}
	return int(id)
}

// slirpListHostfwd returns the entries of list_hostfwd (in the return object).
func slirpListHostfwd(t *testing.T, sock string) []any {
	t.Helper()
	m, raw, err := slirpAPICall(sock, `{"execute":"list_hostfwd"}`)
	if err != nil {
		t.Fatalf("list_hostfwd: %v", err)
	}
	ret, ok := m["return"].(map[string]any)
	if !ok {
		t.Fatalf("list_hostfwd replied %s, want a return object", raw)
	}
	entries, ok := ret["entries"].([]any)
	if !ok {
		t.Fatalf("list_hostfwd replied %s, want return.entries", raw)
	}
	return entries
}

// rootlesskit builds a rootlesskit command run by world.Nobody (it refuses
// to run as root without subordinate ids for root) with rootlessnet as its
// slirp4netns binary and the test binary as the container's command.
func (e *env) slirpRootlesskit(ctx context.Context, name string, flags []string, mode string, args ...string) *exec.Cmd {
	full := []string{
		"--state-dir=" + filepath.Join(e.scratch, name),
		"--net=slirp4netns", "--slirp4netns-binary=" + e.bin,
	}
	full = append(full, flags...)
	full = append(full, "--", e.helper)
	cmd := exec.CommandContext(ctx, "rootlesskit", full...)
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + e.scratch, "XDG_RUNTIME_DIR=" + e.scratch,
		"TMPDIR=" + e.scratch, helperEnv + "=" + mode, "RLN_ARGS=" + strings.Join(args, " "),
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: world.Nobody, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func TestRootlesskitDropIn(t *testing.T) {
	if _, err := exec.LookPath("rootlesskit"); err != nil {
		t.Skip("rootlesskit is not installed")
	}
	t.Run("host-loopback", func(t *testing.T) {
		e := newEnv(t, world.Nobody)
		echo := e.w.TCPEcho(t, "127.0.0.1:0")
		port := e.slirpFreePort(t, "127.0.0.1")
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		p := e.slirpStart(t, e.slirpRootlesskit(ctx, "rk",
			[]string{"--port-driver=slirp4netns", "--disable-host-loopback=false", fmt.Sprintf("--publish=127.0.0.1:%d:%d/tcp", port, slirpGuestPort)},
			"slirp-rk-container", fmt.Sprintf("10.0.2.2:%d", echo.Port())))
		if !p.stdout.waitFor("READY", p, 40*time.Second) {
			t.Fatalf("the container never got ready\n%s", p.output())
		}
		// rootlesskit adds the forward through the API socket; it may
		// come a moment after the container started.
		got, err := e.slirpWhoamiRetry(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second)
		if err != nil {
			t.Fatalf("dialing the published port 127.0.0.1:%d: %v\n%s", port, err, p.output())
		}
		if !strings.HasPrefix(got, "10.0.2.2:") {
			t.Errorf("the container saw a loopback client as %q, want 10.0.2.2:PORT", got)
		}
		status, ok := p.wait(30 * time.Second)
		if !ok {
			t.Fatalf("rootlesskit did not exit after the container's command\n%s", p.output())
		}
		if status != 0 || !strings.Contains(p.stdout.String(), "OK") {
			t.Fatalf("rootlesskit exited %d\n%s", status, p.output())
		}
	})
	t.Run("disable-host-loopback", func(t *testing.T) {
		// rootlesskit --disable-host-loopback (its default is false in
		// 1.x) passes --disable-host-loopback to rootlessnet.
		e := newEnv(t, world.Nobody)
		echo := e.w.TCPEcho(t, "127.0.0.1:0")
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		p := e.slirpStart(t, e.slirpRootlesskit(ctx, "rk", []string{"--disable-host-loopback"}, "tcp-refused", fmt.Sprintf("10.0.2.2:%d", echo.Port())))
		status, ok := p.wait(60 * time.Second)
		if !ok {
			t.Fatalf("rootlesskit did not exit\n%s", p.output())
		}
		if status != 0 || !strings.Contains(p.stdout.String(), "OK") {
			t.Fatalf("rootlesskit exited %d\n%s", status, p.output())
		}
	})
}

func TestSlirpFormFlags(t *testing.T) {
	e := newEnv(t, world.Nobody)
	run := func(args ...string) (int, string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := e.command(ctx, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := e.w.Start(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		status := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			status = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("rootlessnet %v: %v", args, err)
		}
		if strings.Contains(stderr.String(), "panic") {
			t.Errorf("rootlessnet %v panicked:\n%s", args, stderr.String())
		}
		return status, stdout.String(), stderr.String()
	}

	for _, flag := range []string{"--help", "-h"} {
		status, out, errOut := run(flag)
		if status != 0 {
			t.Errorf("%s: status %d, want 0; stderr:\n%s", flag, status, errOut)
		}
		for _, want := range []string{"--netns-type", "--enable-ipv6", "--cidr", "--disable-host-loopback", "--api-socket", "--enable-sandbox", "--enable-seccomp", "--mtu", "--outbound-addr"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: stdout lacks %q (clients grep for it):\n%s", flag, want, out)
			}
		}
	}

	for _, flag := range []string{"--version", "-v"} {
		status, out, errOut := run(flag)
		if status != 0 {
			t.Errorf("%s: status %d, want 0; stderr:\n%s", flag, status, errOut)
		}
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if !regexp.MustCompile(`^rootlessnet version \d+\.\d+\.\d+\S*$`).MatchString(lines[0]) {
			t.Errorf("%s: first line %q, want \"rootlessnet version X.Y.Z\"", flag, lines[0])
		}
		if len(lines) < 2 {
			t.Errorf("%s: no key: value lines after the version:\n%s", flag, out)
		}
		kv := regexp.MustCompile(`^[A-Za-z0-9_.-]+: \S.*$`)
		for _, l := range lines[1:] {
			if !kv.MatchString(l) {
				t.Errorf("%s: line %q is not \"key: value\"", flag, l)
			}
		}
	}

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--netns-type=foo", "1234"}, []string{"--netns-type", "foo"}},
		{[]string{"--netns-type", "foo", "1234", "tap0"}, []string{"--netns-type", "foo"}},
		{[]string{"abc"}, []string{"PID", "abc"}},
		{[]string{"abc", "tap0"}, []string{"PID", "abc"}},
		{[]string{"--netns-type=pid", "-5"}, []string{}},
	} {
		status, _, errOut := run(tc.args...)
		if status == 0 {
			t.Errorf("rootlessnet %v: status 0, want an error", tc.args)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("rootlessnet %v: stderr %q lacks %q", tc.args, errOut, w)
			}
		}
	}
}

// slirpContainer starts the slirp-newns helper: new user and network
// namespaces made by the env's user, waiting for tap0. It returns the
// container's pid and process, and its stdin, whose closing ends it.
func (e *env) slirpContainer(t *testing.T, ctx context.Context) (int, *slirpProc, io.WriteCloser) {
	t.Helper()
	return e.containerAs(t, ctx, "slirp-newns")
}

// containerAs is slirpContainer with another helper role.
func (e *env) containerAs(t *testing.T, ctx context.Context, role string) (int, *slirpProc, io.WriteCloser) {
	t.Helper()
	ctr := e.commandPath(ctx, e.helper)
	ctr.Env = append(ctr.Env, helperEnv+"="+role)
	ctrIn, err := ctr.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cp := e.slirpStart(t, ctr)
	t.Cleanup(func() { ctrIn.Close() })
	if !cp.stdout.waitFor("\n", cp, 20*time.Second) {
		t.Fatalf("no PID from the container\n%s", cp.output())
	}
	var pid int
	if _, err := fmt.Sscanf(cp.stdout.String(), "PID %d", &pid); err != nil {
		t.Fatalf("container said %q: %v", cp.stdout.String(), err)
	}
	return pid, cp, ctrIn
}

func TestSlirpFormReadyAndExitFD(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()

		// The container: new user+net namespaces made by the user itself.
		pid, cp, ctrIn := e.slirpContainer(t, ctx)

		readyR, readyW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer readyR.Close()
		exitR, exitW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer exitW.Close()

		sock := filepath.Join(e.scratch, "api.sock")
		rn := e.command(ctx, "--resolv-conf", e.w.ResolvConf(),
			"--mtu", "65520", "-r", "3", "-e", "4", "-c", "--api-socket", sock, strconv.Itoa(pid), "tap0")
		rn.ExtraFiles = []*os.File{readyW, exitR}
		started := time.Now()
		rp := e.slirpStart(t, rn)
		readyW.Close()
		exitR.Close()

		readyR.SetReadDeadline(time.Now().Add(30 * time.Second))
		first := make([]byte, 1)
		if _, err := io.ReadFull(readyR, first); err != nil {
			t.Fatalf("no byte on the ready fd: %v\n%s", err, rp.output())
		}
		if first[0] != '1' {
			t.Errorf("ready fd got %q, want \"1\"", first)
		}
		t.Logf("ready after %v", time.Since(started))

		// Ready means the API socket listens already.
		fi, err := os.Lstat(sock)
		if err != nil {
			t.Fatalf("the API socket is missing once ready: %v", err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Errorf("API socket mode %v, want a socket with mode 0600", fi.Mode())
		}
		if entries := slirpListHostfwd(t, sock); len(entries) != 0 {
			t.Errorf("list_hostfwd at start: %v, want none", entries)
		}

		// Then the fd is closed: EOF, and nothing more.
		rest, err := io.ReadAll(readyR)
		if err != nil || len(rest) != 0 {
			t.Errorf("after \"1\" the ready fd gave %q, %v; want EOF", rest, err)
		}

		// tap0 configured (-c): the container serves on :8080.
		if !cp.stdout.waitFor("READY", cp, 20*time.Second) {
			t.Fatalf("the container never saw tap0 configured\ncontainer %s\nrootlessnet %s", cp.output(), rp.output())
		}
		port := e.slirpFreePort(t, "127.0.0.1")
		id := slirpAddHostfwd(t, sock, "127.0.0.1", port, slirpGuestPort)
		entries := slirpListHostfwd(t, sock)
		if len(entries) != 1 {
			t.Errorf("list_hostfwd after add: %v, want one entry", entries)
		} else if en, _ := entries[0].(map[string]any); en["id"] != float64(id) || en["host_port"] != float64(port) || en["guest_port"] != float64(slirpGuestPort) || en["guest_addr"] != "10.0.2.100" || en["host_addr"] != "127.0.0.1" || en["proto"] != "tcp" {
			t.Errorf("list_hostfwd entry %v, want id %d tcp 127.0.0.1:%d -> 10.0.2.100:%d", en, id, port, slirpGuestPort)
		}
		got, err := e.slirpWhoami(fmt.Sprintf("127.0.0.1:%d", port), "")
		if err != nil {
			t.Fatalf("dialing the forward: %v\nrootlessnet %s", err, rp.output())
		}
		if !strings.HasPrefix(got, "10.0.2.2:") {
			t.Errorf("the container saw a loopback client as %q, want 10.0.2.2:PORT", got)
		}

		// Closing the exit fd's write end ends rootlessnet, status 0,
		// socket removed.
		exitW.Close()
		closed := time.Now()
		status, ok := rp.wait(5 * time.Second)
		if !ok {
			t.Fatalf("rootlessnet still runs 5 s after the exit fd closed\n%s", rp.output())
		}
		t.Logf("exited %v after the exit fd closed", time.Since(closed))
		if status != 0 {
			t.Errorf("rootlessnet exited %d after the exit fd closed, want 0\n%s", status, rp.output())
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the API socket is still there after exit: %v", err)
		}
		if m, _ := filepath.Glob(filepath.Join(e.scratch, ".rnapi*")); len(m) != 0 {
			t.Errorf("leftover temporary API directories: %v", m)
		}

		ctrIn.Close()
		if status, ok := cp.wait(15 * time.Second); !ok || status != 0 || !strings.Contains(cp.stdout.String(), "OK") {
			t.Errorf("container: status %d (exited %v)\n%s", status, ok, cp.output())
		}
	})
}

// slirpRunServer starts `rootlessnet run [flags] -- helper slirp-whoami-server` and
// waits for the server to listen. Closing the returned stdin ends it.
func (e *env) slirpRunServer(t *testing.T, ctx context.Context, flags ...string) (*slirpProc, io.WriteCloser) {
	t.Helper()
	full := append([]string{"run", "--resolv-conf", e.w.ResolvConf()}, flags...)
	full = append(full, "--", e.helper)
	cmd := e.command(ctx, full...)
	cmd.Env = append(cmd.Env, helperEnv+"=slirp-whoami-server")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := e.slirpStart(t, cmd)
	t.Cleanup(func() { in.Close() })
	if !p.stdout.waitFor("READY", p, 30*time.Second) {
		t.Fatalf("the container server never got ready\n%s", p.output())
	}
	return p, in
}

// finish ends a slirpRunServer process and checks its status.
func slirpFinish(t *testing.T, p *slirpProc, in io.WriteCloser) {
	t.Helper()
	in.Close()
	status, ok := p.wait(15 * time.Second)
	if !ok {
		t.Fatalf("rootlessnet run did not end when the command's stdin closed\n%s", p.output())
	}
	if status != 0 || !strings.Contains(p.stdout.String(), "OK") {
		t.Errorf("rootlessnet run exited %d\n%s", status, p.output())
	}
}

// TestPublishSourceAddress runs on both TCP paths: with the fast path
// (the default) a published port's connection is the fast path's too
// (DialTCPFast), and the container must still see the client's address.
func TestPublishSourceAddress(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		port := e.slirpFreePort(t, "0.0.0.0")
		p, in := e.slirpRunServer(t, ctx, withFlags(tcp, "-p", fmt.Sprintf("0.0.0.0:%d:%d", port, slirpGuestPort))...)

		e.publishWarmUp(t, p, fmt.Sprintf("127.0.0.1:%d", port))
		// A client with a real address keeps it.
		e.publishedWhoami(t, tcp, p, fmt.Sprintf("%s:%d", world.UplinkV4, port), world.UplinkV4, world.UplinkV4+":")
		// A loopback client shows as the gateway.
		e.publishedWhoami(t, tcp, p, fmt.Sprintf("127.0.0.1:%d", port), "", "10.0.2.2:")
		// Again, both: every connection takes the path.
		e.publishedWhoami(t, tcp, p, fmt.Sprintf("%s:%d", world.UplinkV4, port), world.UplinkV4, world.UplinkV4+":")
		e.publishedWhoami(t, tcp, p, fmt.Sprintf("127.0.0.1:%d", port), "", "10.0.2.2:")
		slirpFinish(t, p, in)

		// A port in use in the world: an error at start naming the port.
		busy, err := e.w.Listen("tcp", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		busyPort := busy.Addr().(*net.TCPAddr).Port
		r := e.run(withFlags(tcp, "-p", fmt.Sprintf("0.0.0.0:%d:%d", busyPort, slirpGuestPort)), "slirp-whoami-server")
		if r.status == 0 || strings.Contains(r.stdout, "READY") {
			t.Errorf("publishing a busy port: status %d, stdout %q; want a failure before the command runs", r.status, r.stdout)
		}
		if !strings.Contains(r.stderr, strconv.Itoa(busyPort)) || !strings.Contains(r.stderr, "in use") {
			t.Errorf("publishing a busy port: stderr %q does not name port %d as in use", r.stderr, busyPort)
		}
	})
}

// TestAPIAddRemoveLive runs on both TCP paths: forwards added through
// the API take the fast path too.
func TestAPIAddRemoveLive(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sock := filepath.Join(e.scratch, "api.sock")
		p, in := e.slirpRunServer(t, ctx, withFlags(tcp, "-a", sock)...)
		if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("API socket: %v, %v; want mode 0600", fi, err)
		}

		port := e.slirpFreePort(t, "127.0.0.1")
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		id := slirpAddHostfwd(t, sock, "127.0.0.1", port, slirpGuestPort)
		if id != 1 {
			t.Errorf("first add_hostfwd id %d, want 1", id)
		}
		if n := len(slirpListHostfwd(t, sock)); n != 1 {
			t.Errorf("list_hostfwd has %d entries, want 1", n)
		}
		e.publishWarmUp(t, p, addr)
		e.publishedWhoami(t, tcp, p, addr, "", "10.0.2.2:")

		// The same host port twice: an error object, nothing added.
		m, raw, err := slirpAPICall(sock, fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":%d}}`, port, slirpGuestPort))
		if err != nil || m["error"] == nil {
			t.Errorf("add_hostfwd of a port in use replied %s, %v; want an error object", raw, err)
		}

		m, raw, err = slirpAPICall(sock, fmt.Sprintf(`{"execute":"remove_hostfwd","arguments":{"id":%d}}`, id))
		if err != nil || m["error"] != nil || m["return"] == nil {
			t.Fatalf("remove_hostfwd replied %s, %v; want {\"return\":{}}", raw, err)
		}
		if n := len(slirpListHostfwd(t, sock)); n != 0 {
			t.Errorf("list_hostfwd has %d entries after remove, want 0", n)
		}
		_, err = e.slirpWhoami(addr, "")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dialing a removed forward: %v, want connection refused", err)
		}
		// Removing it again is an error; a new forward gets a new id.
		m, raw, _ = slirpAPICall(sock, fmt.Sprintf(`{"execute":"remove_hostfwd","arguments":{"id":%d}}`, id))
		if m["error"] == nil {
			t.Errorf("removing id %d twice replied %s, want an error object", id, raw)
		}
		if id2 := slirpAddHostfwd(t, sock, "127.0.0.1", port, slirpGuestPort); id2 != id+1 {
			t.Errorf("re-added forward got id %d, want %d (ids are never reused)", id2, id+1)
		}
		e.publishedWhoami(t, tcp, p, addr, "", "10.0.2.2:")

		for _, req := range []string{
			`{"execute":"no_such_command"}`,
			`not json`,
			`{"arguments":{}}`,
			`{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}`,
			`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":1}}`,
			`{"execute":"remove_hostfwd","arguments":{"id":"x"}}`,
		} {
			m, raw, err := slirpAPICall(sock, req)
			if err != nil {
				t.Errorf("request %s: %v", req, err)
				continue
			}
			ev, _ := m["error"].(map[string]any)
			desc, _ := ev["desc"].(string)
			if !strings.HasPrefix(desc, "bad request") {
				t.Errorf("request %s replied %s, want {\"error\":{\"desc\":\"bad request: ...\"}}", req, raw)
			}
		}
		slirpFinish(t, p, in)
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the API socket is still there after exit: %v", err)
		}
	})
}
