package main

// podman's rootless bridge network, member to member, for -networks: run
// as the unprivileged user rlntest (as test/e2e/launchers_test.go does,
// with subordinate ids, runc, cgroupfs, vfs storage and a HOME and
// XDG_RUNTIME_DIR of the bench's own), offline: a busybox image imported
// from busybox-static's binary, with the host's iperf3 and the libraries
// it loads mounted read-only.

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rootlessnet/rootlessnet/test/userprocs"
)

const (
	podUser  = "rlntest"
	podImage = "localhost/rnbench-busybox:latest"
)

type podBench struct {
	cfg  *config
	rec  *recorder
	why  string // why podman's figures are n/a ("" once it works)
	dir  string
	run  string // XDG_RUNTIME_DIR
	cred *syscall.Credential
	env  []string
	// mounts are the -v flags of iperf3 and its libraries.
	mounts []string
	ready  bool
	// netMTU maps the row's MTU to the podman network.
	nets map[int]string
}

// newPodBench checks what podman needs; measure does the setup once.
func newPodBench(cfg *config, rec *recorder) *podBench {
	p := &podBench{cfg: cfg, rec: rec, nets: map[int]string{}}
	if os.Geteuid() != 0 {
		p.why = "the bench does not run as root (podman runs as " + podUser + ")"
		return p
	}
	for _, tool := range []string{"podman", "runc", "conmon", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			p.why = tool + " is not installed"
			return p
		}
	}
	if _, err := os.Stat("/usr/lib/podman/netavark"); err != nil {
		p.why = "netavark is not installed"
		return p
	}
	if f, err := elf.Open("/bin/busybox"); err != nil {
		p.why = "busybox-static is not installed"
		return p
	} else {
		for _, pr := range f.Progs {
			if pr.Type == elf.PT_INTERP {
				p.why = "/bin/busybox is not static"
			}
		}
		f.Close()
		if p.why != "" {
			return p
		}
	}
	u, err := user.Lookup(podUser)
	if err != nil {
		p.why = "no user " + podUser
		return p
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return p
}

func (p *podBench) note() string {
	if p.why != "" {
		return "podman: n/a (" + p.why + ")."
	}
	return "podman bridge: podman 4 as the unprivileged user " + podUser + " (runc, netavark, vfs storage), one `podman network create` bridge per MTU (`-o mtu=65520`, and the default 1500); iperf3 -s in container a, iperf3 -c a (by name, aardvark-dns) in container b, both busybox with the host's /usr/bin/iperf3 and its libraries (ldd) mounted read-only; each container is a `podman run` (the server -d, removed after the figure)."
}

// cmd runs podman as the user with the bench's environment.
func (p *podBench) cmd(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, "podman", args...)
	c.Dir = p.dir
	c.Env = p.env
	c.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	return c
}

func (p *podBench) podman(timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runOutput(ctx, p.cmd(ctx, args...))
}

// setup makes the directories, configuration, image and networks.
func (p *podBench) setup() error {
	dir, err := os.MkdirTemp("", "rnb-pod-") // short: podman's socket paths
	if err != nil {
		return err
	}
	p.dir = dir
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	home := filepath.Join(dir, "home")
	p.run = filepath.Join(dir, "r")
	for _, d := range []string{home, p.run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
		if err := os.Chown(d, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return err
		}
	}
	conf := filepath.Join(dir, "containers.conf")
	storage := filepath.Join(dir, "storage.conf")
	if err := os.WriteFile(conf, []byte("[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\n[network]\nnetwork_backend = \"netavark\"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(storage, []byte("[storage]\ndriver = \"vfs\"\n"), 0o644); err != nil {
		return err
	}
	p.env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + home, "XDG_RUNTIME_DIR=" + p.run, "TMPDIR=" + p.run,
		"USER=" + podUser, "LOGNAME=" + podUser, "CONTAINERS_CONF=" + conf, "CONTAINERS_STORAGE_CONF=" + storage,
	}
	if p.mounts, err = iperfMounts(); err != nil {
		return err
	}
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := busyboxTar(tarPath); err != nil {
		return err
	}
	if out, err := p.podman(3*time.Minute, "import", tarPath, podImage); err != nil {
		return fmt.Errorf("podman import: %v: %s", err, firstLine(out))
	}
	for _, mtu := range []int{65520, 1500} {
		name := fmt.Sprintf("rnbnet%d", mtu)
		args := []string{"network", "create", name}
		if mtu != 1500 {
			args = append(args, "-o", fmt.Sprintf("mtu=%d", mtu))
		}
		if _, err := p.podman(time.Minute, args...); err != nil {
			return fmt.Errorf("podman network create: %w", err)
		}
		p.nets[mtu] = name
	}
	return nil
}

// iperfMounts are -v flags mounting /usr/bin/iperf3 and every library
// ldd lists for it, read-only, at the paths the loader looks for.
func iperfMounts() ([]string, error) {
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	mounts := []string{"-v", bin + ":/usr/bin/iperf3:ro"}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		var path string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			path = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			path = f[0] // the loader
		default:
			continue
		}
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, "-v", real+":"+path+":ro")
	}
	return mounts, nil
}

// busyboxTar writes a root filesystem with busybox-static's binary, its
// applets and minimal /etc files.
func busyboxTar(path string) error {
	list, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return err
	}
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	add := func(h *tar.Header, body []byte) error {
		h.ModTime = now
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "root", "usr", "usr/bin"} {
		if err := add(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}, nil); err != nil {
			return err
		}
	}
	if err := add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil); err != nil {
		return err
	}
	if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bin); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return err
		}
	}
	if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\n")); err != nil {
		return err
	}
	if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, []byte("root:x:0:\n")); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// measure: member to member throughput on each bridge.
func (p *podBench) measure() {
	figs := []string{"m2m-65520", "m2m-1500"}
	if p.why != "" {
		return
	}
	if !p.ready {
		if err := p.setup(); err != nil {
			p.why = "setup failed: " + err.Error()
			p.rec.fail(colPodman, strings.Join(figs, ", "), err)
			return
		}
		p.ready = true
	}
	for _, mtu := range []int{65520, 1500} {
		fig := fmt.Sprintf("m2m-%d", mtu)
		r, err := p.memberToMember(p.nets[mtu])
		if err != nil {
			p.rec.fail(colPodman, fig, err)
			continue
		}
		p.rec.add(colPodman, fig, r.End.SumReceived.BitsPerSecond/1e9)
	}
}

func (p *podBench) memberToMember(network string) (*iperfResult, error) {
	run := func(extra ...string) []string {
		args := append([]string{"run", "--network", network}, extra[:len(extra)-1]...)
		args = append(args, p.mounts...)
		return append(args, podImage, extra[len(extra)-1])
	}
	srv := append(run("-d", "--name", "a", "/usr/bin/iperf3"), "-s", "--forceflush", "-p", fmt.Sprint(guestPort))
	if out, err := p.podman(2*time.Minute, srv...); err != nil {
		return nil, fmt.Errorf("podman run (server): %v: %s", err, firstLine(out))
	}
	defer p.podman(time.Minute, "rm", "-f", "-t", "0", "a")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := p.podman(30*time.Second, "logs", "a")
		if bytes.Contains(out, []byte("listening")) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the server container never listened: %s", firstLine(out))
		}
		time.Sleep(200 * time.Millisecond)
	}
	cli := append(run("--rm", "/usr/bin/iperf3"), "-c", "a", "-p", fmt.Sprint(guestPort), "-t", fmt.Sprint(p.cfg.secs), "-J", "--connect-timeout", "5000")
	out, err := p.podman(time.Duration(p.cfg.secs+120)*time.Second, cli...)
	return parseIperf(out, err)
}

// close removes the containers, networks and image, ends podman's pause
// process and whatever else of the user's still runs with this
// XDG_RUNTIME_DIR (or in their user namespaces), and removes the
// directory. Not through startProc: it runs while the bench is torn down.
func (p *podBench) close() {
	if p.dir == "" {
		return
	}
	for _, args := range [][]string{{"rm", "-a", "-f", "-t", "0"}, {"network", "rm", "-f", "rnbnet65520", "rnbnet1500"}} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		p.cmd(ctx, args...).Run()
		cancel()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := p.procs()
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "bench: podman: processes still alive 15 s after SIGKILL: %v\n", pids)
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// vfs layers hold files of the user's subordinate ids: root removes them.
	if err := os.RemoveAll(p.dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench: podman:", err)
	}
}

// procs are the user's processes whose environment names this
// XDG_RUNTIME_DIR, and the user's others in their user namespaces.
func (p *podBench) procs() []int { return userprocs.Of(p.cred.Uid, p.run) }
