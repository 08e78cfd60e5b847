package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

// TestRunInsideRootlesskit runs `rootlessnet run` inside a rootlesskit
// child (a user namespace with subordinate ids mapped by newuidmap and
// setgroups allowed, as docker's and podman's rootless modes make): the
// nested run's container reaches the world through NAT and resolves
// through the DNS address. The `nested` variant of the other tests covers
// `unshare -r`, where setgroups is denied.
func TestRunInsideRootlesskit(t *testing.T) {
	if _, err := exec.LookPath("rootlesskit"); err != nil {
		t.Skip("rootlesskit is not installed")
	}
	e := newEnv(t, world.Nobody)
	echo := e.w.TCPEcho(t, "198.51.100.1:0")
	e.w.DNS(t, "198.51.100.1:53")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	script := fmt.Sprintf(`set -e
cat /proc/self/setgroups
%[1]s run --resolv-conf %[2]s -- %[3]s
RLN_HELPER=dns RLN_ARGS="10.0.2.3:53 %[4]s" %[1]s run --resolv-conf %[2]s -- %[3]s
`, e.bin, e.w.ResolvConf(), e.helper, world.DNSName)
	cmd := exec.CommandContext(ctx, "rootlesskit", "--state-dir="+filepath.Join(e.scratch, "rk"), "--net=host", "--", "sh", "-c", script)
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + e.scratch, "XDG_RUNTIME_DIR=" + e.scratch, "TMPDIR=" + e.scratch,
		helperEnv + "=tcp-echo", "RLN_ARGS=" + echo.String() + " 1048576",
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: world.Nobody, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := e.w.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rootlesskit -- rootlessnet run: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "allow") || strings.Count(out.String(), "OK") != 2 || !strings.Contains(out.String(), "A=198.51.100.7") {
		t.Fatalf("want setgroups allowed in rootlesskit's namespace and two OKs (TCP echo, DNS), got:\n%s", out.String())
	}
}
