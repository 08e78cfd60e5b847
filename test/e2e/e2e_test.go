// Package e2e runs rootlessnet for real: a fake outside world in a network
// namespace (test/world), rootlessnet inside it as root and as an
// unprivileged uid, and client programs inside the container it serves.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

var builtBinary string

func TestMain(m *testing.M) {
	if status, ok := runHelper(); ok {
		os.Exit(status)
	}
	dir, err := os.MkdirTemp("", "rootlessnet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	builtBinary = filepath.Join(dir, "rootlessnet")
	build := exec.Command("go", "build", "-o", builtBinary, "github.com/rootlessnet/rootlessnet/cmd/rootlessnet")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building rootlessnet:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	status := m.Run()
	os.RemoveAll(dir)
	os.Exit(status)
}

// env is one world with rootlessnet's binary and the helper binary where
// the chosen user can execute them.
type env struct {
	t      *testing.T
	w      *world.World
	bin    string
	helper string
	cred   *syscall.Credential
	// nestedIn, when not 0, is the pid of a process in a user namespace
	// the env's user made with `unshare -r` (setgroups denied, as
	// bubblewrap, flatpak and many CI sandboxes leave it): every command
	// runs in it.
	nestedIn int
	// scratch is a directory the user can write to.
	scratch string
}

type variant struct {
	name   string
	cred   *syscall.Credential
	nested bool
}

// variants are where rootlessnet runs: as root, as an unprivileged uid
// with no capability at all, and as that uid nested inside a user
// namespace of its own made by `unshare -r`.
var variants = []variant{{name: "root"}, {name: "unprivileged", cred: world.Nobody}, {name: "nested", cred: world.Nobody, nested: true}}

// newVariantEnv is newEnv for a variant.
func newVariantEnv(t *testing.T, v variant) *env {
	t.Helper()
	e := newEnv(t, v.cred)
	if v.nested {
		e.nest(t)
	}
	return e
}

// nest makes the env's commands run inside a user namespace made by
// `unshare -r` as the env's user: a holder process keeps it, and each
// command joins it with nsenter, as a shell inside `unshare -r` would
// start them.
func (e *env) nest(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s (util-linux) is not installed", tool)
		}
	}
	holder := exec.Command("unshare", "-Ur", "--", "sleep", "600")
	holder.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	holder.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred, Pdeathsig: syscall.SIGKILL}
	if err := e.w.Start(holder); err != nil {
		t.Fatalf("unshare -Ur: %v", err)
	}
	t.Cleanup(func() {
		holder.Process.Kill()
		holder.Wait()
	})
	// unshare execs sleep once the namespace is made and mapped.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/setgroups", holder.Process.Pid))
		if strings.TrimSpace(string(b)) == "deny" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unshare -Ur never denied setgroups (setgroups %q)", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.nestedIn = holder.Process.Pid
}

func newEnv(t *testing.T, cred *syscall.Credential) *env {
	t.Helper()
	w := world.New(t)
	if cred != nil {
		if fi, err := os.Stat("/dev/net/tun"); err != nil || fi.Mode().Perm()&0o006 != 0o006 {
			t.Fatalf("/dev/net/tun must be mode 0666 for unprivileged runs (.ci/run sets it): %v", fi.Mode())
		}
	}
	scratch, err := os.MkdirTemp("", "rootlessnet-scratch-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(scratch, 0o777)
	t.Cleanup(func() { os.RemoveAll(scratch) })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		t: t, w: w, cred: cred, scratch: scratch,
		bin:    world.ExecutableCopy(t, builtBinary),
		helper: world.ExecutableCopy(t, self),
	}
}

// result is a finished rootlessnet process.
type result struct {
	status         int
	stdout, stderr string
}

// command makes a rootlessnet command line for the world, as the env's
// user.
func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	return e.commandPath(ctx, e.bin, args...)
}

// commandPath makes a command line for the world that runs path, as the
// env's user and, in a nested env, inside its user namespace.
func (e *env) commandPath(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	if e.nestedIn != 0 {
		// nsenter execs path (no fork): the process is still path's.
		nsenter := []string{"nsenter", "-U", "--preserve-credentials", "-t", strconv.Itoa(e.nestedIn), "--", path}
		cmd = exec.CommandContext(ctx, "nsenter", append(nsenter[1:], args...)...)
	}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "TMPDIR=" + e.scratch, "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs `rootlessnet run [flags] -- helper` with the helper mode and
// args, in the world, and returns when it ends (bounded by 3 minutes).
func (e *env) run(flags []string, mode string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"run", "--resolv-conf", e.w.ResolvConf()}, flags...)
	full = append(full, "--", e.helper)
	cmd := e.command(ctx, full...)
	cmd.Env = append(cmd.Env, helperEnv+"="+mode, "RLN_ARGS="+strings.Join(args, " "))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := e.w.Start(cmd); err != nil {
		e.t.Fatalf("starting rootlessnet: %v", err)
	}
	err := cmd.Wait()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.status = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("rootlessnet: %v", err)
	}
	return r
}

// mustOK runs a helper and fails the test unless it printed OK.
func (e *env) mustOK(flags []string, mode string, args ...string) string {
	e.t.Helper()
	r := e.run(flags, mode, args...)
	if r.status != 0 || !strings.Contains(r.stdout, "OK") {
		e.t.Fatalf("%s %v: status %d\nstdout:\n%s\nstderr:\n%s", mode, args, r.status, r.stdout, r.stderr)
	}
	return r.stdout
}

func forEachVariant(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) { fn(t, newVariantEnv(t, v)) })
	}
}

func TestOutboundTCPLargeTransfer(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		sink := e.w.TCPSink(t, "198.51.100.1:0")
		// 1 GiB through the NAT (256 MiB on the fast path), checked by
		// SHA-256 at the far end.
		e.mustTCP(tcp, nil, "tcp-sink", sink.String(), fmt.Sprint(largeSinkSize(tcp)))
		// Both ways at once, at the default MTU (65520) and at 1500,
		// with the offloads on.
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		for _, mtu := range []string{"65520", "1500"} {
			e.mustTCP(tcp, []string{"--mtu", mtu}, "tcp-echo", echo.String(), fmt.Sprint(bothWaysSize))
		}
	})
}

func TestOutboundTCPHalfClose(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		e.mustTCP(tcp, []string{"--mtu", "1500"}, "tcp-halfclose", echo.String())
		// The plain path, one frame per syscall and no offloads.
		e.mustTCP(tcp, []string{"--mtu", "1500", "--offload=false"}, "tcp-halfclose", echo.String())
		sink := e.w.TCPSink(t, "198.51.100.1:0")
		e.mustTCP(tcp, []string{"--offload=false"}, "tcp-sink", sink.String(), fmt.Sprint(16<<20))
		e.mustTCP(tcp, []string{"--offload=false"}, "tcp-echo", echo.String(), fmt.Sprint(16<<20))

		// The other way round: the world sends and half-closes first,
		// and the container sends on the half-open connection.
		const greeting, size = 200 << 10, 4 << 20
		got := make(chan string, 1)
		peer := startSoakServer(t, e.w, "198.51.100.1:0", func(c *net.TCPConn) {
			c.Write(pattern(greeting))
			c.CloseWrite()
			h := sha256.New()
			n, err := io.Copy(h, plainConn{c})
			got <- fmt.Sprintf("sha256 %x, %d bytes, error %v", h.Sum(nil), n, err)
		})
		want := fmt.Sprintf("sha256 %x, %d bytes, error <nil>", sha256.Sum256(pattern(size)), size)
		for _, flags := range [][]string{nil, {"--mtu", "1500", "--offload=false"}} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			p := e.startRun(t, ctx, 0, withFlags(tcp, flags...), "tcp-peer-halfclose", peer, fmt.Sprint(greeting), fmt.Sprint(size))
			p.waitLine(t, "SENT", time.Minute)
			select {
			case s := <-got:
				if s != want {
					t.Errorf("%v: the world received %s; want %s", flags, s, want)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%v: the world's server is still reading 30 s after the container sent all and half-closed\n%s", flags, p.output())
			}
			p.finish(t)
			checkCarrier(t, tcp, p.output())
		}
	})
}

func TestOutboundTCPRefusedIsRST(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		// Nothing listens on port 9 of the world: the kernel refuses
		// the host's connect, and the container's connect fails with
		// ECONNREFUSED (a reset), not a timeout.
		e.mustOK(tcp, "tcp-refused", "198.51.100.1:9")
		e.mustOK(withFlags(tcp, "--mtu", "1500", "--offload=false"), "tcp-refused", "198.51.100.1:9")
	})
}

func TestOutboundUDP(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.UDPEcho(t, "198.51.100.1:0")
		e.mustOK(nil, "udp-echo", echo.String())
		e.mustOK(nil, "udp-stream", echo.String())
		e.mustOK(nil, "udp-runs", echo.String())
		e.mustOK([]string{"--offload=false"}, "udp-runs", echo.String())
		e.mustOK(nil, "udp-refused", "198.51.100.1:9")
	})
}

func TestDNSThroughDNSAddress(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		_, log := e.w.DNS(t, "198.51.100.1:53")
		out := e.mustOK(nil, "dns", "10.0.2.3:53", world.DNSName)
		for _, want := range []string{
			"udp rcode=NOERROR A=198.51.100.7 TXT=" + world.DNSTXT,
			"tcp rcode=NOERROR A=198.51.100.7 TXT=" + world.DNSTXT,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("answer lacks %q:\n%s", want, out)
			}
		}
		if log.Len() < 2 {
			t.Errorf("the upstream saw %d queries, want 2 (udp and tcp)", log.Len())
		}
		// Other ports of the DNS address are not a way anywhere.
		e.mustOK(nil, "tcp-refused", "10.0.2.3:80")
	})
}

func TestDNSLoopbackUpstream(t *testing.T) {
	// A resolver on the host's loopback (systemd-resolved's 127.0.0.53)
	// must work: the forwarder lives in the host namespace.
	e := newEnv(t, nil)
	e.w.DNS(t, "127.0.0.53:53")
	resolv := filepath.Join(e.scratch, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.53\n"), 0o644)
	out := e.mustOK([]string{"--resolv-conf", resolv}, "dns", "10.0.2.3:53", world.DNSName)
	if !strings.Contains(out, "A=198.51.100.7") {
		t.Errorf("no answer through a loopback upstream:\n%s", out)
	}
}

func TestDNSDeadUpstreamServfail(t *testing.T) {
	e := newEnv(t, nil)
	resolv := filepath.Join(e.scratch, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 198.51.100.1\n"), 0o644) // nothing listens on 53
	out := e.mustOK([]string{"--resolv-conf", resolv}, "dns", "10.0.2.3:53", world.DNSName)
	for _, want := range []string{"udp rcode=SERVFAIL", "tcp rcode=SERVFAIL"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q:\n%s", want, out)
		}
	}
}

func TestGatewayReachesHostLoopback(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.TCPEcho(t, "127.0.0.1:0")
		udp := e.w.UDPEcho(t, "127.0.0.1:0")
		e.mustOK(nil, "tcp-halfclose", fmt.Sprintf("10.0.2.2:%d", echo.Port()))
		e.mustOK(nil, "udp-echo", fmt.Sprintf("10.0.2.2:%d", udp.Port()))
		// --disable-host-loopback refuses the same server.
		e.mustOK([]string{"--disable-host-loopback"}, "tcp-refused", fmt.Sprintf("10.0.2.2:%d", echo.Port()))
		e.mustOK([]string{"--disable-host-loopback"}, "udp-refused", fmt.Sprintf("10.0.2.2:%d", udp.Port()))
	})
}

func TestPing(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		e.mustOK(nil, "ping", "10.0.2.2")
		e.mustOK(nil, "ping", "10.0.2.3")
		// Outside: through a ping socket, allowed in the world.
		e.mustOK(nil, "ping", "198.51.100.1")
	})
}

func TestPingNoForgedReplies(t *testing.T) {
	e := newEnv(t, world.Nobody)
	if err := e.w.SetPingGroupRange(1, 0); err != nil {
		t.Fatal(err)
	}
	// An address nobody has: no reply may come back.
	r := e.run(nil, "ping", "198.51.100.99")
	if r.status == 0 {
		t.Fatalf("ping to a dead address got a reply:\n%s", r.stdout)
	}
	// A live address with ping sockets forbidden: no reply either, and
	// one warning saying why.
	r = e.run(nil, "ping", "198.51.100.1")
	if r.status == 0 {
		t.Fatalf("ping with ping sockets disabled got a reply:\n%s", r.stdout)
	}
	if strings.Count(r.stderr, "ICMP echo to outside addresses is unavailable") != 1 || !strings.Contains(r.stderr, "ping_group_range") {
		t.Errorf("want one warning naming ping_group_range, got:\n%s", r.stderr)
	}
}

func TestRunExitStatusAndSignals(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := e.command(ctx, "run", "--resolv-conf", e.w.ResolvConf(), "--", e.helper)
		cmd.Env = append(cmd.Env, helperEnv+"=signal-wait")
		stdout, _ := cmd.StdoutPipe()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := e.w.Start(cmd); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		if strings.TrimSpace(line) != "READY" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper said %q; stderr:\n%s", line, stderr.String())
		}
		cmd.Process.Signal(syscall.SIGTERM)
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 42 {
			t.Fatalf("rootlessnet exited with %v, want the command's status 42; stderr:\n%s", err, stderr.String())
		}

		// A shell killed by a signal: 128+signal.
		r := e.runShell(`kill -KILL $$`)
		if r.status != 128+9 {
			t.Errorf("status %d, want 137; stderr:\n%s", r.status, r.stderr)
		}
		r = e.runShell(`exit 3`)
		if r.status != 3 {
			t.Errorf("status %d, want 3", r.status)
		}
	})
}

func (e *env) runShell(script string) result {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.command(ctx, "run", "--resolv-conf", e.w.ResolvConf(), "--", "/bin/sh", "-c", script)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := e.w.Start(cmd); err != nil {
		e.t.Fatal(err)
	}
	err := cmd.Wait()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.status = ee.ExitCode()
	}
	return r
}

func TestRunConfiguresNamespace(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		r := e.runShell(`cat /etc/resolv.conf; cat /proc/net/route`)
		for _, want := range []string{"nameserver 10.0.2.3", "tap0\t00000000\t0202000A"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("namespace lacks %q:\n%s%s", want, r.stdout, r.stderr)
			}
		}
		out := e.mustOK([]string{"--mtu", "1500", "--macaddress", "02:00:00:00:00:42"}, "link")
		if !strings.Contains(out, "mtu=1500 mac=02:00:00:00:00:42 up=true") {
			t.Errorf("tap0 is %s", out)
		}
		// The host's resolv.conf is untouched.
		if b, _ := os.ReadFile("/etc/resolv.conf"); strings.Contains(string(b), "10.0.2.3") {
			t.Errorf("the host's /etc/resolv.conf changed")
		}
	})
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, world.Nobody)
	for _, tc := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"run", "--mtu", "10", "--", "true"}, 2, "invalid --mtu 10"},
		{[]string{"run", "--cidr", "10.0.2.1/24", "--", "true"}, 2, "did you mean 10.0.2.0/24"},
		{[]string{"run", "--cidr", "banana", "--", "true"}, 2, "invalid --cidr"},
		{[]string{"run", "--log-level", "loud", "--", "true"}, 2, "invalid --log-level"},
		{[]string{"run", "--no-such-flag", "--", "true"}, 2, "unknown flag"},
		{[]string{"run"}, 2, "no command given"},
		{[]string{"run", "--", "/nonexistent/cmd"}, 127, "cannot execute /nonexistent/cmd"},
		{[]string{"run", "--", "/etc/hostname"}, 126, "cannot execute /etc/hostname"},
		{[]string{"--netns", "/proc/self/ns/user"}, 1, "is not a network namespace"},
		{[]string{"--netns", "/nonexistent"}, 1, "no such file"},
		{[]string{}, 2, "no namespace given"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := e.command(ctx, tc.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := e.w.Start(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		cancel()
		status := 0
		if ee, ok := err.(*exec.ExitError); ok {
			status = ee.ExitCode()
		}
		if status != tc.status || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("rootlessnet %v: status %d, stderr %q; want %d and %q", tc.args, status, stderr.String(), tc.status, tc.want)
		}
		if strings.Contains(stderr.String(), "panic") {
			t.Errorf("rootlessnet %v panicked:\n%s", tc.args, stderr.String())
		}
	}
}

// nsContainer starts helper mode (newns, newns6) with args: new user and
// network namespaces made by the env's user. It returns the process, the
// pid it printed first, the rest of its stdout and its stderr.
func (e *env) nsContainer(t *testing.T, ctx context.Context, mode string, args ...string) (*exec.Cmd, int, *bufio.Reader, *bytes.Buffer) {
	t.Helper()
	ctr := e.commandPath(ctx, e.helper)
	ctr.Env = append(ctr.Env, helperEnv+"="+mode, "RLN_ARGS="+strings.Join(args, " "))
	ctrOut, err := ctr.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ctrErr := new(bytes.Buffer)
	ctr.Stderr = ctrErr
	if err := e.w.Start(ctr); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(ctrOut)
	line, _ := rd.ReadString('\n')
	var pid int
	if _, err := fmt.Sscanf(line, "PID %d", &pid); err != nil {
		ctr.Process.Kill()
		ctr.Wait()
		t.Fatalf("container said %q: %s", line, ctrErr.String())
	}
	return ctr, pid, rd, ctrErr
}

func TestAttachMode(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// The container: new user+net namespaces made by the user
		// itself, waiting for tap0 to be configured.
		ctr, pid, rd, ctrErr := e.nsContainer(t, ctx, "newns", echo.String())

		rn := e.command(ctx, "--netns", fmt.Sprintf("/proc/%d/ns/net", pid), "--resolv-conf", e.w.ResolvConf())
		var rnOut, rnErr bytes.Buffer
		rn.Stdout, rn.Stderr = &rnOut, &rnErr
		if err := e.w.Start(rn); err != nil {
			t.Fatal(err)
		}
		rest, _ := rd.ReadString('\n')
		ctrWait := ctr.Wait()
		exitedAt := time.Now()
		if ctrWait != nil || !strings.Contains(rest, "OK") {
			rn.Process.Kill()
			rn.Wait()
			t.Fatalf("container: %v %q\n%s\nrootlessnet:\n%s", ctrWait, rest, ctrErr.String(), rnErr.String())
		}
		// The namespace's process exited: rootlessnet follows within a
		// second (bounded generously here: this is not a timing test).
		done := make(chan error, 1)
		go func() { done <- rn.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("rootlessnet exited with %v; stderr:\n%s", err, rnErr.String())
			}
			t.Logf("rootlessnet exited %v after the namespace's process", time.Since(exitedAt))
		case <-time.After(10 * time.Second):
			rn.Process.Kill()
			<-done
			t.Fatalf("rootlessnet did not exit when the namespace went away")
		}
		if !strings.Contains(rnOut.String(), "address 10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3") {
			t.Errorf("attach mode printed %q", rnOut.String())
		}
	})
}

func TestPcap(t *testing.T) {
	e := newEnv(t, world.Nobody)
	echo := e.w.UDPEcho(t, "198.51.100.1:0")
	pcap := filepath.Join(e.scratch, "out.pcap")
	e.mustOK([]string{"--pcap", pcap}, "udp-echo", echo.String())
	b, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	// pcap global header: magic, and LINKTYPE_RAW; then records.
	if len(b) < 24 || !bytes.Equal(b[:4], []byte{0xd4, 0xc3, 0xb2, 0xa1}) {
		t.Fatalf("not a pcap file: % x", b[:min(len(b), 24)])
	}
	if !bytes.Contains(b, []byte("datagram 0")) {
		t.Errorf("the capture lacks the UDP payload (%d bytes)", len(b))
	}
}

// TestRunStopDuringStart signals run's whole process group (as a
// terminal's Ctrl-C and timeout(1) do, so its helpers get the signal too)
// at moments spread over its start: before the namespaces exist, during
// the TAP's setup, the sandbox's pivot, and once the command runs. Each
// stop is quiet, with the status a shell gives a command killed by
// SIGTERM.
func TestRunStopDuringStart(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		const port = 15203 // the world's loopback is the env's own
		for delay := time.Duration(0); delay <= 60*time.Millisecond; delay += 4 * time.Millisecond {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			cmd := e.command(ctx, "run", "--resolv-conf", e.w.ResolvConf(), "--enable-sandbox",
				"-p", fmt.Sprintf("127.0.0.1:%d:5203", port), "--", "sleep", "30")
			cmd.SysProcAttr.Setpgid = true
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := e.w.Start(cmd); err != nil {
				cancel()
				t.Fatal(err)
			}
			time.Sleep(delay)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			err := cmd.Wait()
			cancel()
			status := 0
			if ee, ok := err.(*exec.ExitError); ok {
				status = ee.ExitCode()
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					status = 128 + int(ws.Signal())
				}
			}
			if status != 128+int(syscall.SIGTERM) {
				t.Errorf("signalled after %v: status %d (%v), want 143; stderr:\n%s", delay, status, err, stderr.String())
			}
			for _, line := range strings.Split(stderr.String(), "\n") {
				if strings.HasPrefix(line, "rootlessnet:") || strings.Contains(line, "level=ERROR") {
					t.Errorf("signalled after %v, run printed an error: %s", delay, line)
				}
			}
		}
	})
}
