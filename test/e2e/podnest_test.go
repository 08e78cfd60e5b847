package e2e

// `rootlessnet run` nested inside a rootless podman container: the
// container is podman's user namespace (uid 0 in it is the launcher's
// user, 1-65536 its subordinate ids), and rootlessnet makes its own user,
// network and mount namespaces below it.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

// ldLibs returns the shared objects (the dynamic loader included) that
// ldd lists for the binaries: they go into the busybox image, which has
// no libc, as read-only bind mounts of the machine's files. None for a
// static binary.
func ldLibs(t *testing.T, bins ...string) []string {
	t.Helper()
	seen := map[string]bool{}
	var libs []string
	re := regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)`)
	for _, bin := range bins {
		if staticBinary(bin) == nil {
			continue
		}
		out, err := exec.Command("ldd", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("ldd %s: %v\n%s", bin, err, out)
		}
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				libs = append(libs, m[1])
			}
		}
	}
	return libs
}

// subIDRange returns the first range of launcherUser (by name or uid) in
// a subordinate id file as "START COUNT".
func subIDRange(t *testing.T, path string, uid uint32) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Split(strings.TrimSpace(line), ":"); len(f) == 3 && (f[0] == launcherUser || f[0] == fmt.Sprint(uid)) {
			return f[1] + " " + f[2]
		}
	}
	t.Fatalf("%s has no range for %s", path, launcherUser)
	return ""
}

// blockUserNSProfile writes a seccomp profile for podman: its default
// profile (which allows unshare and clone with any flags, so user
// namespaces) made to refuse new user namespaces as docker's default
// profile does for a container without CAP_SYS_ADMIN: clone with
// CLONE_NEWUSER and unshare fail with EPERM, clone3 (whose flags a filter
// cannot see) with ENOSYS, so that the C library falls back to clone.
func (l *launcher) blockUserNSProfile() string {
	l.t.Helper()
	b, err := os.ReadFile("/usr/share/containers/seccomp.json")
	if err != nil {
		l.t.Skipf("podman's default seccomp profile: %v", err)
	}
	var prof map[string]any
	if err := json.Unmarshal(b, &prof); err != nil {
		l.t.Fatalf("/usr/share/containers/seccomp.json: %v", err)
	}
	drop := map[string]bool{"clone": true, "clone3": true, "unshare": true}
	rules, _ := prof["syscalls"].([]any)
	var kept []any
	for _, r := range rules {
		m, _ := r.(map[string]any)
		names, _ := m["names"].([]any)
		var rest []any
		for _, n := range names {
			if s, _ := n.(string); !drop[s] {
				rest = append(rest, n)
			}
		}
		if len(rest) == 0 {
			continue
		}
		m["names"] = rest
		kept = append(kept, m)
	}
	const cloneNewUser = 0x10000000
	kept = append(kept,
		map[string]any{"names": []string{"clone"}, "action": "SCMP_ACT_ALLOW",
			"args": []any{map[string]any{"index": 0, "value": cloneNewUser, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}}},
		map[string]any{"names": []string{"clone"}, "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
			"args": []any{map[string]any{"index": 0, "value": cloneNewUser, "valueTwo": cloneNewUser, "op": "SCMP_CMP_MASKED_EQ"}}},
		map[string]any{"names": []string{"unshare"}, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
		map[string]any{"names": []string{"clone3"}, "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
	)
	prof["syscalls"] = kept
	out, err := json.MarshalIndent(prof, "", "\t")
	if err != nil {
		l.t.Fatal(err)
	}
	path := filepath.Join(l.dir, "seccomp-no-userns.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// TestPodmanNested runs `rootlessnet run` inside a rootless podman
// container (podman run as the unprivileged launcherUser in the fake
// world) and checks that the nested command reaches the world through
// rootlessnet's NAT (a TCP echo round trip of 1 MiB), resolves through
// the DNS address 10.0.2.3 (answered by the world's DNS server), and has
// rootlessnet's address 10.0.2.100.
//
// What the container needs: /dev/net/tun (--device /dev/net/tun; rootless
// podman bind-mounts the machine's node, 0666), the binaries and the
// world's resolv.conf mounted in, and, the image having no libc, the
// shared objects ldd lists for them (rootlessnet is cgo: the nsenter and
// sandbox constructors). Nothing else: podman's default seccomp profile
// (containers-common's seccomp.json) allows unshare and clone with
// CLONE_NEWUSER, and no capability is needed for an unprivileged user
// namespace. The CI machine has no SELinux or AppArmor, so label and
// AppArmor options are neither needed nor tested here.
//
// In the container (checked below): uid_map is "0 UID 1" and
// "1 SUBUID 65536" (the user's own uid and its subordinate range, as
// newuidmap wrote them for podman's pause process), setgroups is "allow",
// and Seccomp is 2 (filtered). The container's root has podman's default
// capabilities: CAP_SETGID but not CAP_SYS_ADMIN. So with the sandbox (on
// by default) rootlessnet first makes the sandbox's user namespace, which
// maps its own ids and so must deny setgroups, and the command's namespace
// below it inherits the denial; with --enable-sandbox=false the container's
// root makes the command's namespace with setgroups allowed, and another
// uid (no CAP_SETGID) with it denied.
//
// Cases: podman's host network (the world itself), podman's default
// rootless network (slirp4netns, which is rootlessnet too here: nested
// NAT), a non-root uid in the container, and a seccomp profile that
// refuses user namespaces as docker's does, where rootlessnet must say so.
func TestPodmanNested(t *testing.T) {
	l := newLauncher(t, "podman", "runc", "conmon", "ldd")
	e := l.e
	l.podmanConf()
	t.Cleanup(l.podmanCleanup)
	echo := e.w.TCPEcho(t, world.UplinkV4+":0")
	e.w.DNS(t, world.UplinkV4+":53")
	l.must(2*time.Minute, "podman", "import", l.busyboxTar(), launcherImage)

	mounts := []string{"--device", "/dev/net/tun",
		"-v", e.bin + ":/rln/rootlessnet:ro", "-v", e.helper + ":/rln/helper:ro",
		"-v", e.w.ResolvConf() + ":/rln/resolv.conf:ro"}
	for _, lib := range ldLibs(t, e.bin, e.helper) {
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, "-v", real+":"+lib+":ro")
	}
	// The nested command's checks, each line a key and its result.
	script := fmt.Sprintf(`echo "uid_map $(cat /proc/self/uid_map | tr -s ' \n' '  ')"
echo "setgroups $(cat /proc/self/setgroups)"
echo "seccomp $(awk '/^Seccomp:/ {print $2}' /proc/self/status)"
echo "self $(/rln/rootlessnet run --resolv-conf /rln/resolv.conf -- ip -4 -o addr show | sed -n 's/.* inet \([0-9.]*\).*/\1/p' | grep -v '^127\.' | head -n 1)"
echo "nested-setgroups $(/rln/rootlessnet run --resolv-conf /rln/resolv.conf -- cat /proc/self/setgroups)"
echo "unsandboxed-setgroups $(/rln/rootlessnet run --enable-sandbox=false --resolv-conf /rln/resolv.conf -- cat /proc/self/setgroups)"
echo "tcp $(RLN_HELPER=tcp-echo RLN_ARGS='%s 1048576' /rln/rootlessnet run --resolv-conf /rln/resolv.conf -- /rln/helper 2>&1 | tail -n 1)"
echo "dns $(RLN_HELPER=dns RLN_ARGS='10.0.2.3:53 %s' /rln/rootlessnet run --resolv-conf /rln/resolv.conf -- /rln/helper 2>&1 | tr '\n' ' ')"
`, echo, world.DNSName)
	// podman maps the user's first subordinate range after its own uid.
	wantMap := fmt.Sprintf("0 %d 1 1 %s", l.cred.Uid, subIDRange(t, "/etc/subuid", l.cred.Uid))

	for _, c := range []struct {
		name  string
		flags []string
		// setgroups in rootlessnet's namespace without the sandbox.
		unsandboxed string
	}{
		// The container shares the world's network namespace: the nested
		// rootlessnet's sockets are the world's.
		{"host-network", []string{"--network", "host"}, "allow"},
		// podman's default rootless network: the outer rootlessnet (as
		// slirp4netns) serves the container, the nested one its command.
		{"slirp4netns", []string{"--network", "slirp4netns"}, "allow"},
		// A non-root uid of the container (a subordinate id outside):
		// no CAP_SETGID, so its namespace denies setgroups.
		{"non-root", []string{"--network", "host", "--user", "65534:65534"}, "deny"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := l.with(t)
			args := append(append([]string{"run", "--rm"}, c.flags...), mounts...)
			out := l.must(3*time.Minute, "podman", append(args, launcherImage, "sh", "-c", script)...)
			t.Logf("in the container:\n%s", out)
			if got := field(out, "uid_map"); got != wantMap {
				t.Errorf("the container's uid_map is %q, want %q (podman's user namespace)", got, wantMap)
			}
			if got := field(out, "setgroups"); got != "allow" {
				t.Errorf("the container's setgroups is %q, want allow", got)
			}
			if got := field(out, "seccomp"); got != "2" {
				t.Errorf("the container's Seccomp is %q, want 2 (podman's default profile)", got)
			}
			if got := field(out, "self"); got != "10.0.2.100" {
				t.Errorf("the nested command's address is %q, want 10.0.2.100 (rootlessnet's)\n%s", got, out)
			}
			if got := field(out, "nested-setgroups"); got != "deny" {
				t.Errorf("setgroups in rootlessnet's namespace (sandboxed) is %q, want deny", got)
			}
			if got := field(out, "unsandboxed-setgroups"); got != c.unsandboxed {
				t.Errorf("setgroups in rootlessnet's namespace with --enable-sandbox=false is %q, want %s", got, c.unsandboxed)
			}
			if got := field(out, "tcp"); got != "OK" {
				t.Errorf("the TCP echo through rootlessnet's NAT to %s: %q, want OK\n%s", echo, got, out)
			}
			if got := field(out, "dns"); strings.Count(got, "A=198.51.100.7") != 2 || !strings.HasSuffix(got, "OK") {
				t.Errorf("DNS through 10.0.2.3 (UDP and TCP): %q, want A=198.51.100.7 twice and OK\n%s", got, out)
			}
		})
	}

	t.Run("seccomp-blocks-userns", func(t *testing.T) {
		// Under a profile that refuses user namespaces, rootlessnet fails
		// and names the cause (the sandbox, on by default, warns and is
		// left out first: it needs a user namespace too).
		l := l.with(t)
		args := append([]string{"run", "--rm", "--network", "host", "--security-opt", "seccomp=" + l.blockUserNSProfile()}, mounts...)
		out, err := l.do(2*time.Minute, "podman", append(args, launcherImage,
			"/rln/rootlessnet", "run", "--resolv-conf", "/rln/resolv.conf", "--", "true")...)
		t.Logf("podman run: %v\n%s", err, out)
		if err == nil {
			t.Fatalf("rootlessnet run succeeded under a profile refusing user namespaces\n%s", out)
		}
		if !strings.Contains(out, "cannot create a user namespace: this process runs under a seccomp filter") {
			t.Errorf("rootlessnet's error does not name the seccomp filter:\n%s", out)
		}
	})
}
