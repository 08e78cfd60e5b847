package e2e

// --enable-sandbox and --enable-seccomp: the stack process ends up with an
// empty root, CAP_NET_BIND_SERVICE alone on every thread, a seccomp
// filter, and traffic, published ports and the API still work.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/test/world"
)

func init() {
	// sandbox-deny-unshare BIN ARGS...: exec BIN under a seccomp filter
	// that refuses unshare(2), as some container runtimes' policies do.
	extraHelpers["sandbox-deny-unshare"] = sandboxDenyUnshare
}

func sandboxDenyUnshare(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: sandbox-deny-unshare BIN ARGS...")
	}
	err := seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionAllow,
			Syscalls:      []seccomp.SyscallGroup{{Action: seccomp.ActionErrno, Names: []string{"unshare"}}},
		},
	})
	if err != nil {
		return err
	}
	os.Unsetenv(helperEnv)
	return syscall.Exec(args[0], args, os.Environ())
}

// capNetBindService is the capability mask of CAP_NET_BIND_SERVICE alone,
// as /proc/PID/status prints it.
const capNetBindService = "0000000000000400"

// procStatus returns the fields of a /proc/.../status file.
func procStatus(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// checkConfinement checks the stack process pid: with sandbox, an empty
// root and CAP_NET_BIND_SERVICE alone on every thread; with filter, seccomp
// filtering on every thread.
func checkConfinement(t *testing.T, pid int, sandbox, filter bool) {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/root", pid))
	switch {
	case err != nil:
		t.Errorf("reading /proc/%d/root: %v", pid, err)
	case sandbox && len(entries) != 0:
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("the sandboxed stack's root holds %v, want nothing", names)
	case !sandbox && len(entries) == 0:
		t.Errorf("the unsandboxed stack's root is empty")
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) < 2 {
		t.Errorf("the stack has %d threads; the check is meant for several", len(tasks))
	}
	for _, task := range tasks {
		st, err := procStatus(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		if sandbox {
			for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
				if st[k] != capNetBindService {
					t.Errorf("thread %s: %s %s, want %s (CAP_NET_BIND_SERVICE alone)", task.Name(), k, st[k], capNetBindService)
				}
			}
			if st["CapAmb"] != "0000000000000000" {
				t.Errorf("thread %s: CapAmb %s, want none", task.Name(), st["CapAmb"])
			}
			if st["NoNewPrivs"] != "1" {
				t.Errorf("thread %s: NoNewPrivs %s, want 1", task.Name(), st["NoNewPrivs"])
			}
		}
		want := "0"
		if filter {
			want = "2"
		}
		if st["Seccomp"] != want {
			t.Errorf("thread %s: Seccomp %s, want %s", task.Name(), st["Seccomp"], want)
		}
	}
}

var confined = []string{"--enable-sandbox", "--enable-seccomp"}

func TestSandboxRun(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		sock := filepath.Join(e.scratch, "api.sock")
		port := e.slirpFreePort(t, "0.0.0.0")
		flags := append([]string{"-a", sock, "-p", fmt.Sprintf("0.0.0.0:%d:%d", port, slirpGuestPort)}, confined...)
		p, in := e.slirpRunServer(t, ctx, flags...)
		checkConfinement(t, p.cmd.Process.Pid, true, true)

		if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Errorf("API socket: %v, %v; want a socket with mode 0600", fi, err)
		}
		// The published port, from the world's address.
		got, err := e.slirpWhoami(fmt.Sprintf("%s:%d", world.UplinkV4, port), world.UplinkV4)
		if err != nil || !strings.HasPrefix(got, world.UplinkV4+":") {
			t.Errorf("published port: %q, %v\n%s", got, err, p.output())
		}
		// A forward added at run time, through the API.
		port2 := e.slirpFreePort(t, "127.0.0.1")
		slirpAddHostfwd(t, sock, "127.0.0.1", port2, slirpGuestPort)
		if n := len(slirpListHostfwd(t, sock)); n != 2 {
			t.Errorf("list_hostfwd has %d entries, want 2 (-p and the API's)", n)
		}
		got, err = e.slirpWhoami(fmt.Sprintf("127.0.0.1:%d", port2), "")
		if err != nil || !strings.HasPrefix(got, "10.0.2.2:") {
			t.Errorf("forward added through the API: %q, %v\n%s", got, err, p.output())
		}
		slirpFinish(t, p, in)
		// The socket was removed from inside the empty root.
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the API socket is still there after exit: %v", err)
		}
		if m, _ := filepath.Glob(filepath.Join(e.scratch, "rootlessnet-*")); len(m) != 0 {
			t.Errorf("leftover temporary files: %v", m)
		}

		// Traffic of every kind through the confined stack.
		sink := e.w.TCPSink(t, "198.51.100.1:0")
		e.mustOK(confined, "tcp-sink", sink.String(), fmt.Sprint(64<<20))
		echo := e.w.TCPEcho(t, "127.0.0.1:0")
		e.mustOK(confined, "tcp-halfclose", fmt.Sprintf("10.0.2.2:%d", echo.Port()))
		e.mustOK(confined, "tcp-refused", "198.51.100.1:9")
		udp := e.w.UDPEcho(t, "198.51.100.1:0")
		e.mustOK(confined, "udp-echo", udp.String())
		e.mustOK(confined, "udp-refused", "198.51.100.1:9")
		e.w.DNS(t, "198.51.100.1:53")
		out := e.mustOK(confined, "dns", "10.0.2.3:53", world.DNSName)
		if !strings.Contains(out, "udp rcode=NOERROR") || !strings.Contains(out, "tcp rcode=NOERROR") {
			t.Errorf("DNS through the confined stack:\n%s", out)
		}
		e.mustOK(confined, "ping", "198.51.100.1")
	})
}

// TestSandboxRunDefaults: `run` confines by default; both flags turn off.
func TestSandboxRunDefaults(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p, in := e.slirpRunServer(t, ctx)
		checkConfinement(t, p.cmd.Process.Pid, true, true)
		slirpFinish(t, p, in)

		p, in = e.slirpRunServer(t, ctx, "--enable-sandbox=false", "--enable-seccomp")
		checkConfinement(t, p.cmd.Process.Pid, false, true)
		slirpFinish(t, p, in)

		p, in = e.slirpRunServer(t, ctx, "--enable-sandbox=false", "--enable-seccomp=false")
		checkConfinement(t, p.cmd.Process.Pid, false, false)
		slirpFinish(t, p, in)
	})
}

// TestSandboxSlirpForm: podman's and rootlesskit's command line with both
// flags; the process exits on its own once the container is gone.
func TestSandboxSlirpForm(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		pid, cp, ctrIn := e.slirpContainer(t, ctx)
		readyR, readyW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer readyR.Close()

		sock := filepath.Join(e.scratch, "api.sock")
		rn := e.command(ctx, "--resolv-conf", e.w.ResolvConf(), "--mtu", "65520", "-r", "3", "-c",
			"--enable-sandbox", "--enable-seccomp", "--api-socket", sock, strconv.Itoa(pid), "tap0")
		rn.ExtraFiles = []*os.File{readyW}
		rp := e.slirpStart(t, rn)
		readyW.Close()
		readyR.SetReadDeadline(time.Now().Add(30 * time.Second))
		if b, err := io.ReadAll(readyR); err != nil || string(b) != "1" {
			t.Fatalf("ready fd gave %q, %v; want \"1\" then EOF\n%s", b, err, rp.output())
		}
		// Ready comes after the confinement.
		checkConfinement(t, rn.Process.Pid, true, true)
		if strings.Contains(rp.stderr.String(), "not enforced") {
			t.Errorf("rootlessnet still warns that the flags are not enforced\n%s", rp.output())
		}
		if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("API socket: %v, %v; want mode 0600", fi, err)
		}

		if !cp.stdout.waitFor("READY", cp, 20*time.Second) {
			t.Fatalf("the container never saw tap0 configured\ncontainer %s\nrootlessnet %s", cp.output(), rp.output())
		}
		port := e.slirpFreePort(t, "127.0.0.1")
		slirpAddHostfwd(t, sock, "127.0.0.1", port, slirpGuestPort)
		got, err := e.slirpWhoami(fmt.Sprintf("127.0.0.1:%d", port), "")
		if err != nil || !strings.HasPrefix(got, "10.0.2.2:") {
			t.Errorf("forward added through the API: %q, %v\n%s", got, err, rp.output())
		}

		// The container ends: its /proc/PID/ns/net goes, which the
		// confined process still notices, and it removes its socket.
		ctrIn.Close()
		if status, ok := cp.wait(15 * time.Second); !ok || status != 0 {
			t.Errorf("container: status %d (exited %v)\n%s", status, ok, cp.output())
		}
		status, ok := rp.wait(5 * time.Second)
		if !ok {
			t.Fatalf("rootlessnet still runs 5 s after the container ended\n%s", rp.output())
		}
		if status != 0 {
			t.Errorf("rootlessnet exited %d, want 0\n%s", status, rp.output())
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the API socket is still there after exit: %v", err)
		}
		if s := rp.output(); strings.Contains(s, "panic") || strings.Contains(s, "operation not permitted") {
			t.Errorf("rootlessnet's output shows a failure under confinement:\n%s", s)
		}
	})
}

// TestSandboxRefused: where the kernel refuses the sandbox's namespaces
// (here a seccomp policy around rootlessnet refuses unshare), an explicit
// --enable-sandbox fails with a message naming the cause, and run's default
// goes on unconfined with a warning.
func TestSandboxRefused(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		try := func(flags ...string) result {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			args := append([]string{e.bin, "run", "--resolv-conf", e.w.ResolvConf()}, flags...)
			args = append(args, "--", "/bin/true")
			cmd := e.commandPath(ctx, e.helper)
			cmd.Env = append(cmd.Env, helperEnv+"=sandbox-deny-unshare", "RLN_ARGS="+strings.Join(args, " "))
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := e.w.Start(cmd); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			r := result{stdout: stdout.String(), stderr: stderr.String()}
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				r.status = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			return r
		}
		r := try("--enable-sandbox")
		if r.status != 1 || !strings.Contains(r.stderr, "sandbox: creating the namespaces") || !strings.Contains(r.stderr, "operation not permitted") {
			t.Errorf("explicit --enable-sandbox where unshare is refused: status %d, stderr:\n%s\nwant status 1 and the cause named", r.status, r.stderr)
		}
		r = try()
		if r.status != 0 || !strings.Contains(r.stderr, "running without the sandbox") {
			t.Errorf("run's default where unshare is refused: status %d, stderr:\n%s\nwant success with a warning", r.status, r.stderr)
		}
		for _, s := range []string{r.stderr} {
			if strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
				t.Errorf("rootlessnet panicked:\n%s", s)
			}
		}
	})
}

// TestSandboxNetnsPathGone: podman's form, a bind-mounted namespace file
// (--netns-type=path). Once podman unmounts and removes it, the confined
// process, which only sees it through a descriptor of its directory, exits.
func TestSandboxNetnsPathGone(t *testing.T) {
	e := newEnv(t, nil) // bind-mounting the namespace file takes root
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pid, cp, _ := e.slirpContainer(t, ctx)
	nsFile := filepath.Join(e.scratch, "netns")
	if err := os.WriteFile(nsFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/net", pid), nsFile, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting the namespace: %v", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(nsFile, unix.MNT_DETACH)
		}
	})

	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	rn := e.command(ctx, "--resolv-conf", e.w.ResolvConf(), "-r", "3", "-c", "--enable-sandbox", "--enable-seccomp",
		"--netns-type=path", nsFile, "tap0")
	rn.ExtraFiles = []*os.File{readyW}
	rp := e.slirpStart(t, rn)
	readyW.Close()
	readyR.SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, err := io.ReadAll(readyR); err != nil || string(b) != "1" {
		t.Fatalf("ready fd gave %q, %v\n%s", b, err, rp.output())
	}
	checkConfinement(t, rn.Process.Pid, true, true)
	if !cp.stdout.waitFor("READY", cp, 20*time.Second) {
		t.Fatalf("the container never saw tap0 configured\n%s", rp.output())
	}
	// Still there: rootlessnet keeps serving.
	time.Sleep(3 * nsPollIntervalForTests)
	if rp.exited() {
		t.Fatalf("rootlessnet exited while the namespace file was there\n%s", rp.output())
	}
	// What podman does on teardown; the container itself lives on.
	if err := unix.Unmount(nsFile, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if err := os.Remove(nsFile); err != nil {
		t.Fatal(err)
	}
	status, ok := rp.wait(5 * time.Second)
	if !ok {
		t.Fatalf("rootlessnet still runs 5 s after the namespace file went\n%s", rp.output())
	}
	if status != 0 || !strings.Contains(rp.stderr.String(), "the namespace is gone") {
		t.Errorf("rootlessnet exited %d, want 0 after saying the namespace is gone\n%s", status, rp.output())
	}
}

// nsPollIntervalForTests is rootlessnet's namespace polling interval.
const nsPollIntervalForTests = 200 * time.Millisecond
