package e2e

// Real launchers end to end: rootless podman (a bridge network whose
// containers reach each other by name, published ports, the slirp4netns
// network mode) and docker's rootless daemon (dockerd-rootless.sh under
// rootlesskit), each running rootlessnet where it would run slirp4netns.
//
// Both run inside the fake world (so rootlessnet's host-side sockets reach
// only the world) as the dedicated unprivileged user rlntest that .ci/run
// creates, with a HOME and XDG_RUNTIME_DIR of the test's own, and an image
// made offline from busybox-static's binary. The real slirp4netns may be
// installed too: the tests prove that the process the launcher ran is
// rootlessnet's binary.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/userprocs"
	"github.com/rootlessnet/rootlessnet/test/world"
)

// launcherUser is the unprivileged user the launchers run as (.ci/run
// creates it with subordinate ids in /etc/subuid and /etc/subgid).
const launcherUser = "rlntest"

// launcherImage is the busybox image the tests import.
const launcherImage = "localhost/rln-busybox:latest"

// busyboxPath is busybox-static's binary.
const busyboxPath = "/bin/busybox"

// launcher is one launcher's run: a world, rootlessnet's binary, and a
// private HOME, XDG_RUNTIME_DIR and PATH for launcherUser.
type launcher struct {
	t    *testing.T
	e    *env
	cred *syscall.Credential
	// dir holds home/, run/ (XDG_RUNTIME_DIR), bin/ (first on PATH, with
	// a slirp4netns link to rootlessnet) and the test's files.
	dir, home, run, pathDir string
	env                     []string
}

// newLauncher skips the test unless every tool (a name looked up in PATH,
// or an absolute path), busybox-static and the test user are there, and
// builds the launcher's world and directories. A cleanup kills whatever
// the launcher left running as the user (processes whose environment
// names this run's XDG_RUNTIME_DIR, and those in their user namespaces)
// and removes the directories.
func newLauncher(t *testing.T, tools ...string) *launcher {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to build the fake world and to run the launchers as " + launcherUser)
	}
	for _, tool := range append(tools, "newuidmap", "newgidmap") {
		if filepath.IsAbs(tool) {
			if _, err := os.Stat(tool); err != nil {
				t.Skipf("%s is not installed (.ci/run installs it): %v", tool, err)
			}
		} else if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (.ci/run installs it)", tool)
		}
	}
	if err := staticBinary(busyboxPath); err != nil {
		t.Skipf("busybox-static is not installed (.ci/run installs it): %v", err)
	}
	u, err := user.Lookup(launcherUser)
	if err != nil {
		t.Skipf("no user %s (.ci/run creates it): %v", launcherUser, err)
	}
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		if !hasSubIDs(f, u) {
			t.Skipf("%s has no range for %s (.ci/run adds %s:300000:65536)", f, launcherUser, launcherUser)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	e := newEnv(t, nil)
	// Short: podman's API socket path, XDG_RUNTIME_DIR/libpod/tmp/ and 68
	// more bytes, must fit in a socket address (108 bytes).
	dir, err := os.MkdirTemp("", "rln-l-")
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the process sweep so that it runs after it.
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	l := &launcher{
		t: t, e: e, dir: dir,
		cred:    &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		home:    filepath.Join(dir, "home"),
		run:     filepath.Join(dir, "r"),
		pathDir: filepath.Join(dir, "bin"),
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{l.home, l.run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(l.pathDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.bin, filepath.Join(l.pathDir, "slirp4netns")); err != nil {
		t.Fatal(err)
	}
	l.env = []string{
		"PATH=" + l.pathDir + ":/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + l.home, "XDG_RUNTIME_DIR=" + l.run, "TMPDIR=" + l.run,
		"USER=" + launcherUser, "LOGNAME=" + launcherUser,
	}
	t.Cleanup(l.sweep)
	return l
}

// with returns a copy of l that reports to t (a subtest).
func (l *launcher) with(t *testing.T) *launcher {
	c := *l
	c.t = t
	return &c
}

// staticBinary fails unless path is an ELF executable with no interpreter
// (it runs in an image with nothing else).
func staticBinary(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// hasSubIDs says whether a subordinate id file has a range for u, by name
// or uid.
func hasSubIDs(path string, u *user.User) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, u.Username+":") || strings.HasPrefix(line, u.Uid+":") {
			return true
		}
	}
	return false
}

// command makes a command run by the user with the launcher's
// environment (plus extra), in the world once started with l.e.w.Start.
func (l *launcher) command(ctx context.Context, extra []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = l.home
	cmd.Env = append(append([]string{}, l.env...), extra...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.cred, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// do runs a command in the world as the user, bounded by timeout, and
// returns its combined output.
func (l *launcher) do(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := l.command(ctx, nil, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := l.e.w.Start(cmd); err != nil {
		return "", err
	}
	err := cmd.Wait()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w after %v", ctx.Err(), timeout)
	}
	return out.String(), err
}

// must is do that fails the test on an error.
func (l *launcher) must(timeout time.Duration, name string, args ...string) string {
	l.t.Helper()
	out, err := l.do(timeout, name, args...)
	if err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// procs returns the processes of the run: the user's processes whose
// environment names this run's XDG_RUNTIME_DIR (the launcher's daemons,
// rootlessnet), and every other process of the user in one of their user
// namespaces other than the initial one (the containers).
func (l *launcher) procs() []int { return userprocs.Of(l.cred.Uid, l.run) }

// sweep kills what the run left running and waits (bounded) for it to
// be gone.
func (l *launcher) sweep() {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := l.procs()
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			l.t.Errorf("processes of the run still alive 15 s after SIGKILL: %v", pids)
			return
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exeProcs returns the command lines of the user's processes running the
// executable at path ("" when path does not exist).
func (l *launcher) exeProcs(path string) []string {
	want, err := os.Stat(path)
	if err != nil {
		return nil
	}
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		fi, err := os.Stat(filepath.Join("/proc", ent.Name()))
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != l.cred.Uid {
			continue
		}
		exe, err := os.Stat(filepath.Join("/proc", ent.Name(), "exe"))
		if err != nil || !os.SameFile(exe, want) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		found = append(found, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")))
	}
	return found
}

// rootlessnetProcs waits up to timeout for the user's rootlessnet
// processes to number at least min, and returns their command lines. It
// fails the test when one of the user's processes runs the real
// slirp4netns.
func (l *launcher) rootlessnetProcs(min int, timeout time.Duration) []string {
	l.t.Helper()
	if real, err := exec.LookPath("slirp4netns"); err == nil {
		if p := l.exeProcs(real); len(p) != 0 {
			l.t.Errorf("the launcher ran the real slirp4netns (%s), not rootlessnet: %q", real, p)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		p := l.exeProcs(l.e.bin)
		if len(p) >= min || time.Now().After(deadline) {
			return p
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitNoRootlessnet waits up to timeout for the user's rootlessnet
// processes to end and fails the test if one is still there.
func (l *launcher) waitNoRootlessnet(timeout time.Duration, why string) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := l.exeProcs(l.e.bin)
		if len(p) == 0 {
			return
		}
		if time.Now().After(deadline) {
			l.t.Errorf("rootlessnet still runs %v after %s: %q", timeout, why, p)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// whoamiCGI answers with the client's address (busybox httpd sets
// REMOTE_ADDR, as "[::ffff:a.b.c.d]" on its dual-stack socket).
const whoamiCGI = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"whoami $REMOTE_ADDR\"\n"

// busyboxTar writes a root filesystem tarball holding busybox-static's
// binary, a link for each of its applets, minimal /etc files and a
// who-am-I CGI under /www (httpd -h /www), readable by the user.
func (l *launcher) busyboxTar() string {
	l.t.Helper()
	list, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		l.t.Fatalf("busybox --list: %v", err)
	}
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		l.t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	add := func(h *tar.Header, body []byte) {
		h.ModTime = now
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			l.t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			l.t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "www", "www/cgi-bin", "root"} {
		add(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bin)
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, []byte("root:x:0:\nnogroup:x:65534:\n"))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "www/cgi-bin/whoami", Mode: 0o755}, []byte(whoamiCGI))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "www/index.html", Mode: 0o644}, []byte("rootlessnet launcher test\n"))
	if err := tw.Close(); err != nil {
		l.t.Fatal(err)
	}
	path := filepath.Join(l.dir, "busybox.tar")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// httpWhoami asks addr (in the world, from local when not empty) for the
// who-am-I CGI, retrying until timeout (a forward may come a moment after
// its container), and returns the address the container saw.
func (l *launcher) httpWhoami(addr, local string, timeout time.Duration) (netip.Addr, error) {
	deadline := time.Now().Add(timeout)
	for {
		body, err := l.httpGet(addr, local, "/cgi-bin/whoami")
		if err == nil {
			return parseWhoami(body)
		}
		if time.Now().After(deadline) {
			return netip.Addr{}, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (l *launcher) httpGet(addr, local, path string) (string, error) {
	var c net.Conn
	err := l.e.w.Do(func() error {
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
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: test\r\n\r\n", path); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("reading the reply: %w (%q)", err, b)
	}
	head, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200 ") {
		return "", fmt.Errorf("reply %q, want 200 OK", b)
	}
	return body, nil
}

// parseWhoami finds "whoami ADDR" in out and returns ADDR, unmapped.
func parseWhoami(out string) (netip.Addr, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "whoami ")
		if !ok {
			continue
		}
		a, err := netip.ParseAddr(strings.Trim(rest, "[]"))
		if err != nil {
			return netip.Addr{}, fmt.Errorf("who-am-I said %q: %w", rest, err)
		}
		return a.Unmap(), nil
	}
	return netip.Addr{}, fmt.Errorf("no who-am-I line in %q", out)
}

// field returns the rest of the first line of out starting with key and
// a space.
func field(out, key string) string {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), key+" "); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// outboundScript is a container's shell script that reports, one key per
// line: its address (self), the who-am-I reply of the world's server
// (world: the address the world saw, rootlessnet's host socket), and
// the echo of a line through the world's echo server (echo).
func outboundScript(whoami, echo netip.AddrPort, msg string) string {
	return fmt.Sprintf(`echo "self $(ip -4 -o addr | sed -n 's/.* inet \([0-9.]*\).*/\1/p' | grep -v '^127\.' | head -n 1)"
echo "world $(nc %s %d </dev/null)"
echo "echo $(echo %s | nc %s %d)"
`, whoami.Addr(), whoami.Port(), msg, echo.Addr(), echo.Port())
}

// checkOutbound checks what outboundScript reported.
func checkOutbound(t *testing.T, out, msg string) {
	t.Helper()
	if got := field(out, "world"); !strings.HasPrefix(got, world.UplinkV4+":") {
		t.Errorf("the world's server saw the container as %q, want %s:PORT (rootlessnet's socket in the world)\n%s", got, world.UplinkV4, out)
	}
	if got := field(out, "echo"); got != msg {
		t.Errorf("the world's echo server returned %q, want %q\n%s", got, msg, out)
	}
}

// podmanConf writes containers.conf and storage.conf for the run and adds
// them to its environment: rootlessnet as network_cmd_path (podman 4.x
// runs that, or the first slirp4netns on PATH, for the slirp4netns
// network mode and for the rootless network namespace of bridge networks).
func (l *launcher) podmanConf() {
	l.t.Helper()
	storage := filepath.Join(l.dir, "storage.conf")
	if err := os.WriteFile(storage, []byte("[storage]\ndriver = \"vfs\"\n"), 0o644); err != nil {
		l.t.Fatal(err)
	}
	l.env = append(l.env, "CONTAINERS_CONF="+l.containersConf("containers.conf", l.e.bin), "CONTAINERS_STORAGE_CONF="+storage)
}

// containersConf writes a containers.conf named name, with cmdPath as
// network_cmd_path unless empty, and returns its path.
func (l *launcher) containersConf(name, cmdPath string) string {
	l.t.Helper()
	cmd := ""
	if cmdPath != "" {
		cmd = fmt.Sprintf("network_cmd_path = %q\n", cmdPath)
	}
	path := filepath.Join(l.dir, name)
	text := "[engine]\n" + cmd + `cgroup_manager = "cgroupfs"
events_logger = "file"
# crun 1.8 refuses hosts with cgroup v1 and v2 mounted together; runc runs there.
runtime = "runc"

[network]
network_backend = "netavark"
`
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// podmanCleanup removes the run's containers, then kills the pause
// process that holds podman's user namespace; the sweep kills what is
// left.
func (l *launcher) podmanCleanup() {
	if out, err := l.do(time.Minute, "podman", "rm", "-a", "-f", "-t", "0"); err != nil {
		l.t.Logf("podman rm: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(l.run, "libpod", "tmp", "pause.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestPodmanRootless(t *testing.T) {
	l := newLauncher(t, "podman", "runc", "conmon", "/usr/lib/podman/netavark", "/usr/lib/podman/aardvark-dns")
	e := l.e
	l.podmanConf()
	podman := func(t *testing.T, timeout time.Duration, args ...string) string {
		t.Helper()
		return l.with(t).must(timeout, "podman", args...)
	}
	t.Cleanup(l.podmanCleanup)
	whoami := e.w.TCPWhoAmI(t, world.UplinkV4+":0")
	echo := e.w.TCPEcho(t, world.UplinkV4+":0")

	podman(t, 2*time.Minute, "import", l.busyboxTar(), launcherImage)
	podman(t, time.Minute, "network", "create", "rlnnet")

	t.Run("bridge", func(t *testing.T) {
		l := l.with(t)
		// A server on the bridge network, with a port published on the
		// world's loopback (podman's rootlessport carries it into the
		// rootless network namespace that rootlessnet serves).
		port := e.slirpFreePort(t, "127.0.0.1")
		podman(t, time.Minute, "run", "-d", "--name", "srv", "--network", "rlnnet",
			"-p", fmt.Sprintf("127.0.0.1:%d:80", port), launcherImage, "httpd", "-f", "-p", "80", "-h", "/www")
		ps := l.rootlessnetProcs(1, 10*time.Second)
		if !containsAll(ps, " --netns-type=path ", "/rootless-netns-", " -c ") {
			t.Errorf("no rootlessnet serving podman's rootless network namespace; rootlessnet processes: %q", ps)
		}

		// A second container reaches the first by name (aardvark-dns),
		// and the world through rootlessnet's NAT.
		const msg = "through-podman-bridge"
		out := podman(t, 2*time.Minute, "run", "--rm", "--network", "rlnnet", launcherImage, "sh", "-c",
			`echo "srv $(wget -qO- http://srv/cgi-bin/whoami)"`+"\n"+outboundScript(whoami, echo, msg))
		self, err := netip.ParseAddr(field(out, "self"))
		if err != nil {
			t.Fatalf("the client's address: %v\n%s", err, out)
		}
		if got, err := parseWhoami(field(out, "srv")); err != nil || got != self {
			t.Errorf("srv saw the client as %v (%v), want its bridge address %v\n%s", got, err, self, out)
		}
		checkOutbound(t, out, msg)

		// The published port from the world's loopback.
		got, err := l.httpWhoami(fmt.Sprintf("127.0.0.1:%d", port), "", 20*time.Second)
		if err != nil {
			t.Fatalf("GET through the published port 127.0.0.1:%d: %v", port, err)
		}
		if !got.Is4() || !got.IsPrivate() {
			t.Errorf("srv saw the published port's client as %v, want an address of the rootless network namespace", got)
		}
		podman(t, time.Minute, "rm", "-f", "-t", "0", "srv")
		// Its last container gone, podman ends the rootless network
		// namespace's rootlessnet with SIGTERM.
		l.waitNoRootlessnet(15*time.Second, "the bridge network's last container was removed")
	})

	t.Run("slirp4netns", func(t *testing.T) {
		l := l.with(t)
		// The slirp4netns network mode with its own port handler: the
		// published port is rootlessnet's (added through its API socket),
		// so a client from the world's uplink keeps its address, and a
		// loopback client shows as 10.0.2.2.
		port := e.slirpFreePort(t, "0.0.0.0")
		podman(t, time.Minute, "run", "-d", "--name", "web", "--network", "slirp4netns:port_handler=slirp4netns",
			"-p", fmt.Sprintf("%d:80", port), launcherImage, "httpd", "-f", "-p", "80", "-h", "/www")
		ps := l.rootlessnetProcs(1, 10*time.Second)
		if !containsAll(ps, " --api-socket ", " -e 3 ", " -r 4 ") {
			t.Errorf("no rootlessnet serving the container; rootlessnet processes: %q", ps)
		}
		got, err := l.httpWhoami(fmt.Sprintf("%s:%d", world.UplinkV4, port), world.UplinkV4, 20*time.Second)
		if err != nil {
			t.Fatalf("GET through the published port from %s: %v", world.UplinkV4, err)
		}
		if got.String() != world.UplinkV4 {
			t.Errorf("the container saw a client from %s as %v, want its own address", world.UplinkV4, got)
		}
		got, err = l.httpWhoami(fmt.Sprintf("127.0.0.1:%d", port), "", 10*time.Second)
		if err != nil || got.String() != "10.0.2.2" {
			t.Errorf("the container saw a loopback client as %v (%v), want 10.0.2.2", got, err)
		}

		const msg = "through-podman-slirp4netns"
		out := podman(t, 2*time.Minute, "run", "--rm", "--network", "slirp4netns", launcherImage, "sh", "-c", outboundScript(whoami, echo, msg))
		checkOutbound(t, out, msg)
		if got := field(out, "self"); got != "10.0.2.100" {
			t.Errorf("the container's address is %q, want 10.0.2.100\n%s", got, out)
		}
		podman(t, time.Minute, "rm", "-f", "-t", "0", "web")
		// podman closes the exit fd (-e 3): rootlessnet ends.
		l.waitNoRootlessnet(15*time.Second, "its container was removed")
	})

	t.Run("path", func(t *testing.T) {
		// Without network_cmd_path, podman runs the first slirp4netns on
		// PATH (from 4.6 on, after those in helper_binaries_dir, where
		// no slirp4netns is): the link to rootlessnet, ahead of the real
		// slirp4netns in /usr/bin.
		// l.must, not podman(): that one has the test's environment.
		l := l.with(t)
		l.env = append(append([]string{}, l.env...), "CONTAINERS_CONF="+l.containersConf("containers-path.conf", ""))
		l.must(time.Minute, "podman", "run", "-d", "--name", "pathweb", "--network", "slirp4netns",
			launcherImage, "httpd", "-f", "-p", "80", "-h", "/www")
		ps := l.rootlessnetProcs(1, 10*time.Second)
		if !containsAll(ps, " -c ", " -e 3 ", " -r 4 ") {
			t.Errorf("podman did not run the slirp4netns link on PATH; rootlessnet processes: %q", ps)
		}
		const msg = "through-the-link-on-path"
		out := l.must(2*time.Minute, "podman", "exec", "pathweb", "sh", "-c", outboundScript(whoami, echo, msg))
		checkOutbound(t, out, msg)
		l.must(time.Minute, "podman", "rm", "-f", "-t", "0", "pathweb")
		l.waitNoRootlessnet(15*time.Second, "its container was removed")
	})
}

// containsAll says whether one of the lines, with a space added at each
// end, contains every substring.
func containsAll(lines []string, subs ...string) bool {
	for _, line := range lines {
		ok := true
		for _, s := range subs {
			if !strings.Contains(" "+line+" ", s) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// dockerdRootless is where Debian's docker.io ships the script.
const dockerdRootless = "/usr/share/docker.io/contrib/dockerd-rootless.sh"

func TestDockerRootless(t *testing.T) {
	script := dockerdRootless
	if p, err := exec.LookPath("dockerd-rootless.sh"); err == nil {
		script = p
	}
	l := newLauncher(t, script, "dockerd", "containerd", "runc", "rootlesskit", "rootlesskit-docker-proxy", "/usr/bin/docker")
	e := l.e
	sock := filepath.Join(l.run, "docker.sock")
	// /usr/bin/docker is docker.io's client (another may come first on
	// PATH).
	docker := func(timeout time.Duration, args ...string) (string, error) {
		return l.do(timeout, "/usr/bin/docker", append([]string{"--host", "unix://" + sock}, args...)...)
	}
	mustDocker := func(t *testing.T, timeout time.Duration, args ...string) string {
		t.Helper()
		out, err := docker(timeout, args...)
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// The script runs rootlesskit --net=slirp4netns (the first slirp4netns
	// on PATH: the link to rootlessnet) --disable-host-loopback, with
	// rootlessnet's port forwarding as the port driver. vfs: no overlay
	// mounts needed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	daemon := e.slirpStart(t, l.command(ctx, []string{"DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER=slirp4netns"},
		script, "--storage-driver=vfs", "--host=unix://"+sock))
	t.Cleanup(func() {
		if daemon.exited() {
			return
		}
		// rootlesskit passes SIGTERM on to dockerd, which stops its
		// containers and exits.
		daemon.cmd.Process.Signal(syscall.SIGTERM)
		if _, ok := daemon.wait(30 * time.Second); !ok {
			t.Errorf("dockerd-rootless.sh still runs 30 s after SIGTERM\n%s", daemon.output())
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := docker(30*time.Second, "info", "--format", "{{.ServerVersion}} {{.Driver}} {{.SecurityOptions}}")
		if err == nil {
			t.Logf("dockerd: %s", strings.TrimSpace(out))
			break
		}
		if daemon.exited() || time.Now().After(deadline) {
			t.Fatalf("the rootless dockerd never answered: %v\n%s\ndaemon %s", err, out, daemon.output())
		}
		time.Sleep(500 * time.Millisecond)
	}
	ps := l.rootlessnetProcs(1, 10*time.Second)
	if !containsAll(ps, " --disable-host-loopback ", " --api-socket ") {
		t.Fatalf("rootlesskit did not run rootlessnet as its slirp4netns (with --disable-host-loopback and an API socket); rootlessnet processes: %q\ndaemon %s", ps, daemon.output())
	}

	mustDocker(t, 2*time.Minute, "import", l.busyboxTar(), launcherImage)

	t.Run("outbound", func(t *testing.T) {
		whoami := e.w.TCPWhoAmI(t, world.UplinkV4+":0")
		echo := e.w.TCPEcho(t, world.UplinkV4+":0")
		const msg = "through-docker-rootless"
		out := mustDocker(t, 2*time.Minute, "run", "--rm", launcherImage, "sh", "-c", outboundScript(whoami, echo, msg))
		checkOutbound(t, out, msg)
	})

	t.Run("disable-host-loopback", func(t *testing.T) {
		// A server on the world's loopback: 10.0.2.2 must not reach it.
		echo := e.w.TCPEcho(t, "127.0.0.1:0")
		out := mustDocker(t, 2*time.Minute, "run", "--rm", launcherImage, "sh", "-c",
			fmt.Sprintf(`echo "echo $(echo leaked | nc -w 5 10.0.2.2 %d 2>&1)"`, echo.Port()))
		got := field(out, "echo")
		if strings.Contains(got, "leaked") || !strings.Contains(got, "Connection refused") {
			t.Errorf("the container's connection to 10.0.2.2:%d (the world's 127.0.0.1) gave %q, want connection refused\n%s", echo.Port(), got, out)
		}
	})

	t.Run("publish", func(t *testing.T) {
		l := l.with(t)
		port := e.slirpFreePort(t, "127.0.0.1")
		mustDocker(t, time.Minute, "run", "-d", "--name", "web", "-p", fmt.Sprintf("127.0.0.1:%d:80", port),
			launcherImage, "httpd", "-f", "-p", "80", "-h", "/www")
		got, err := l.httpWhoami(fmt.Sprintf("127.0.0.1:%d", port), "", 30*time.Second)
		if err != nil {
			t.Fatalf("GET through the published port 127.0.0.1:%d: %v\ndaemon %s", port, err, daemon.output())
		}
		if !got.Is4() || !got.IsPrivate() {
			t.Errorf("the container saw the published port's client as %v, want docker's bridge gateway", got)
		}
		// The forward is rootlessnet's: rootlesskit's port driver added it
		// through rootlessnet's API socket.
		socks, _ := filepath.Glob(filepath.Join(l.run, "*", ".s4nn.sock"))
		if len(socks) != 1 {
			t.Fatalf("rootlesskit's slirp4netns API sockets: %v, want one", socks)
		}
		found := false
		for _, en := range slirpListHostfwd(t, socks[0]) {
			m, _ := en.(map[string]any)
			if m["host_port"] == float64(port) && m["host_addr"] == "127.0.0.1" && m["proto"] == "tcp" {
				found = true
			}
		}
		if !found {
			t.Errorf("rootlessnet's list_hostfwd has no 127.0.0.1:%d: %v", port, slirpListHostfwd(t, socks[0]))
		}
		mustDocker(t, time.Minute, "rm", "-f", "web")
		if _, err := l.httpGet(fmt.Sprintf("127.0.0.1:%d", port), "", "/"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("the published port after its container's removal: %v, want connection refused", err)
		}
	})

	// dockerd and rootlesskit end on SIGTERM, and rootlessnet with them.
	daemon.cmd.Process.Signal(syscall.SIGTERM)
	if _, ok := daemon.wait(30 * time.Second); !ok {
		t.Fatalf("dockerd-rootless.sh still runs 30 s after SIGTERM\n%s", daemon.output())
	}
	l.waitNoRootlessnet(15*time.Second, "the rootless daemon ended")
}
