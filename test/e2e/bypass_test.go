package e2e

// --port-bypass: published TCP ports through the dialer child and splice.
// The guest sees connections come from its own address (10.0.2.100), not
// from the client's; without the flag the client's address is kept
// (TestPublishSourceAddress).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	bypassGuestPort   = 8080
	bypassRefusedPort = 8099 // nothing listens there in the container
	bypassUp          = 3 << 20
	bypassDown        = 4 << 20
	bypassHalf        = 64 << 10
)

func init() {
	// bypass-server: serve :8080 until stdin's EOF (at most 90 s); each
	// connection starts with a command byte (bypassServe).
	extraHelpers["bypass-server"] = func([]string) error { return bypassServer() }
	// bypass-newns: bypass-container in new user+network namespaces.
	extraHelpers["bypass-newns"] = func([]string) error { return newNSMode("bypass-container") }
	// bypass-container: print "PID n", wait for tap0, then bypass-server.
	extraHelpers["bypass-container"] = func([]string) error {
		fmt.Printf("PID %d\n", os.Getpid())
		if err := slirpWaitTap("tap0", 20*time.Second); err != nil {
			return err
		}
		return bypassServer()
	}
}

func bypassServer() error {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", bypassGuestPort))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := bypassServe(c.(*net.TCPConn)); err != nil {
					fmt.Println("SERVER ERROR", err)
				}
			}()
		}
	}()
	fmt.Println("READY")
	eof := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, os.Stdin)
		eof <- err
	}()
	var res error
	select {
	case res = <-eof:
	case <-time.After(90 * time.Second):
		res = errors.New("stdin never reached EOF")
	}
	l.Close()
	wg.Wait()
	return res
}

// bypassServe: 'W' writes the peer's address; 'D' reads to the client's
// half-close, then writes the sha256 of what came and bypassDown bytes of
// pattern; 'H' writes "hello" and half-closes first, then reads to EOF
// and prints "HALF n".
func bypassServe(c *net.TCPConn) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	cmd := make([]byte, 1)
	if _, err := io.ReadFull(c, cmd); err != nil {
		return err
	}
	switch cmd[0] {
	case 'W':
		_, err := io.WriteString(c, c.RemoteAddr().String()+"\n")
		return err
	case 'D':
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return err
		}
		if _, err := c.Write(h.Sum(nil)); err != nil {
			return err
		}
		_, err := c.Write(pattern(bypassDown))
		return err
	case 'H':
		if _, err := io.WriteString(c, "hello"); err != nil {
			return err
		}
		c.CloseWrite()
		n, err := io.Copy(io.Discard, c)
		fmt.Printf("HALF %d\n", n)
		return err
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// bypassDial connects to addr from inside the world.
func (e *env) bypassDial(addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := e.w.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	return c.(*net.TCPConn), nil
}

// bypassWhoami returns the address the guest saw, retrying a few seconds
// (an API forward may come a moment late).
func (e *env) bypassWhoami(addr string) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := func() (string, error) {
			c, err := e.bypassDial(addr)
			if err != nil {
				return "", err
			}
			defer c.Close()
			c.Write([]byte("W"))
			b, err := io.ReadAll(c)
			if err == nil && len(b) == 0 {
				err = errors.New("closed with no reply")
			}
			return strings.TrimSpace(string(b)), err
		}()
		if err == nil || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bypassBothWays sends bypassUp bytes to the guest through addr and wants
// their digest and bypassDown bytes back, the client half-closing first.
func (e *env) bypassBothWays(t *testing.T, addr string) {
	t.Helper()
	c, err := e.bypassDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	up := pattern(bypassUp)
	go func() {
		c.Write([]byte("D"))
		c.Write(up)
		c.CloseWrite()
	}()
	reply, err := io.ReadAll(c)
	c.Close()
	sum := sha256.Sum256(up)
	switch {
	case err != nil:
		t.Errorf("both ways: %v after %d bytes", err, len(reply))
	case len(reply) != 32+bypassDown:
		t.Errorf("both ways: %d bytes back, want %d", len(reply), 32+bypassDown)
	case !bytes.Equal(reply[:32], sum[:]):
		t.Errorf("both ways: the guest received corrupted data")
	case !bytes.Equal(reply[32:], pattern(bypassDown)):
		t.Errorf("both ways: the client received corrupted data")
	}
}

// waitBypassReady waits for the bypass server in p's container to say
// READY.
func waitBypassReady(t *testing.T, p *soakProc) {
	t.Helper()
	select {
	case line := <-p.lines:
		if line != "READY" {
			t.Fatalf("container said %q\n%s", line, p.stderrText())
		}
	case <-p.done:
		t.Fatalf("rootlessnet exited: %v\n%s", p.err, p.stderrText())
	case <-time.After(30 * time.Second):
		t.Fatalf("the container never got ready\n%s", p.stderrText())
	}
}

// bypassChecks runs the traffic checks through the published port addr
// (to the guest's :8080) and refused (to a port nobody listens on);
// out returns the container's stdout so far.
func (e *env) bypassChecks(t *testing.T, addr, refused string, out func() string) {
	t.Helper()
	// The guest sees its own address.
	got, err := e.bypassWhoami(addr)
	if err != nil {
		t.Fatalf("whoami through %s: %v", addr, err)
	}
	t.Logf("the guest saw the client as %s", got)
	if !strings.HasPrefix(got, "10.0.2.100:") {
		t.Errorf("the guest saw the client as %q, want its own address 10.0.2.100:PORT", got)
	}

	e.bypassBothWays(t, addr)

	// The guest half-closes first; the client's data still arrives.
	c, err := e.bypassDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("H"))
	b := make([]byte, 16)
	n, err := io.ReadFull(c, b[:5])
	if err != nil || string(b[:n]) != "hello" {
		t.Errorf("guest half-close: read %q, %v", b[:n], err)
	}
	if n, err := c.Read(b); err != io.EOF {
		t.Errorf("guest half-close: read %d, %v; want EOF", n, err)
	}
	if _, err := c.Write(pattern(bypassHalf)); err != nil {
		t.Errorf("writing after the guest's half-close: %v", err)
	}
	c.CloseWrite()
	c.Close()
	want := fmt.Sprintf("HALF %d\n", bypassHalf)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out(), want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(out(), want) {
		t.Errorf("the guest did not report %q; its output:\n%s", want, out())
	}

	// A refused guest port resets the client, promptly.
	start := time.Now()
	c, err = e.bypassDial(refused)
	if err == nil {
		_, err = c.Read(b)
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Errorf("refused guest port: %v, want the connection reset", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("refused guest port: closed after %v", el)
	}
	if s := out(); strings.Contains(s, "SERVER ERROR") {
		t.Errorf("the guest's server failed:\n%s", s)
	}
}

// childPids returns pid's children.
func childPids(t *testing.T, pid int) []int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}

// dialerOf returns rootlessnet's dialer child, or 0.
func dialerOf(t *testing.T, pid int) int {
	t.Helper()
	for _, c := range childPids(t, pid) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c))
		if strings.HasPrefix(string(b), "rootlessnet-dialer\x00") {
			return c
		}
	}
	return 0
}

// checkGone fails unless pid is gone (a zombie counts as still there:
// nobody reaped it).
func checkGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			t.Errorf("%s (pid %d) is still there:\n%s", what, pid, b)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBypassRun: run mode, confined by default, static ports and an API
// forward through the bypass.
func TestBypassRun(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		port := e.slirpFreePort(t, "127.0.0.1")
		refused := e.slirpFreePort(t, "127.0.0.1")
		for refused == port {
			refused = e.slirpFreePort(t, "127.0.0.1")
		}
		sock := filepath.Join(e.scratch, "api.sock")
		p := e.startRun(t, ctx, 0, []string{
			"--port-bypass", "--api-socket", sock,
			"-p", fmt.Sprintf("127.0.0.1:%d:%d", port, bypassGuestPort),
			"-p", fmt.Sprintf("127.0.0.1:%d:%d", refused, bypassRefusedPort),
		}, "bypass-server")
		waitBypassReady(t, p)
		rn := p.cmd.Process.Pid
		checkConfinement(t, rn, true, true)
		dialer := dialerOf(t, rn)
		if dialer == 0 {
			t.Errorf("no dialer among rootlessnet's children %v", childPids(t, rn))
		}
		out := func() string {
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.out.String()
		}
		e.bypassChecks(t, fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", refused), out)

		// A forward added through the API goes through the bypass too.
		apiPort := e.slirpFreePort(t, "127.0.0.1")
		slirpAddHostfwd(t, sock, "127.0.0.1", apiPort, bypassGuestPort)
		got, err := e.bypassWhoami(fmt.Sprintf("127.0.0.1:%d", apiPort))
		if err != nil || !strings.HasPrefix(got, "10.0.2.100:") {
			t.Errorf("API forward: the guest saw %q, %v; want 10.0.2.100:PORT", got, err)
		}

		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("rootlessnet did not exit after the command\n%s", p.stderrText())
		}
		if p.err != nil || !strings.Contains(out(), "OK") {
			t.Errorf("rootlessnet: %v\nstdout:\n%s\nstderr:\n%s", p.err, out(), p.stderrText())
		}
		if dialer != 0 {
			checkGone(t, dialer, "the dialer")
		}
		if s := p.stderrText(); strings.Contains(s, "panic") || strings.Contains(s, "level=ERROR") {
			t.Errorf("rootlessnet's stderr shows a failure:\n%s", s)
		}
	})
}

// TestBypassSlirpForm: the slirp4netns PID form, as podman and
// rootlesskit start it, unconfined and confined (where the dialer
// outlives the re-execution into the sandbox).
func TestBypassSlirpForm(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		for _, mode := range []struct {
			name  string
			flags []string
		}{{"plain", nil}, {"confined", confined}} {
			t.Run(mode.name, func(t *testing.T) { e.bypassSlirp(t, mode.flags, false) })
		}
	})
}

// TestBypassAttach is the same through --netns PATH (attach mode).
func TestBypassAttach(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) { e.bypassSlirp(t, nil, true) })
}

// bypassSlirp serves a container's namespace with --port-bypass in the
// slirp4netns form (PID TAPNAME, with -c and a ready fd) or, with attach,
// through --netns /proc/PID/ns/net.
func (e *env) bypassSlirp(t *testing.T, flags []string, attach bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pid, cp, ctrIn := e.containerAs(t, ctx, "bypass-newns")

	sock := filepath.Join(e.scratch, "api-"+strconv.Itoa(pid)+".sock")
	port := e.slirpFreePort(t, "127.0.0.1")
	refused := e.slirpFreePort(t, "127.0.0.1")
	for refused == port {
		refused = e.slirpFreePort(t, "127.0.0.1")
	}
	args := append([]string{"--resolv-conf", e.w.ResolvConf(), "--mtu", "65520", "--port-bypass",
		"--api-socket", sock, "-p", fmt.Sprintf("127.0.0.1:%d:%d", refused, bypassRefusedPort)}, flags...)
	var rp *slirpProc
	if attach {
		args = append(args, "--netns", fmt.Sprintf("/proc/%d/ns/net", pid))
		rp = e.slirpStart(t, e.command(ctx, args...))
	} else {
		readyR, readyW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer readyR.Close()
		args = append(args, "-c", "-r", "3", strconv.Itoa(pid), "tap0")
		rn := e.command(ctx, args...)
		rn.ExtraFiles = []*os.File{readyW}
		rp = e.slirpStart(t, rn)
		readyW.Close()
		// Ready comes after the confinement.
		readyR.SetReadDeadline(time.Now().Add(30 * time.Second))
		if b, err := io.ReadAll(readyR); err != nil || string(b) != "1" {
			t.Fatalf("ready fd gave %q, %v; want \"1\" then EOF\n%s", b, err, rp.output())
		}
	}
	rn := rp.cmd
	if !cp.stdout.waitFor("READY", cp, 30*time.Second) {
		t.Fatalf("the container never saw tap0 configured\ncontainer %s\nrootlessnet %s", cp.output(), rp.output())
	}
	if len(flags) > 0 {
		checkConfinement(t, rn.Process.Pid, true, true)
	}
	dialer := dialerOf(t, rn.Process.Pid)
	if dialer == 0 {
		t.Errorf("no dialer among rootlessnet's children %v", childPids(t, rn.Process.Pid))
	}
	// As podman does: the forward comes through the API.
	slirpAddHostfwd(t, sock, "127.0.0.1", port, bypassGuestPort)
	e.bypassChecks(t, fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", refused), cp.stdout.String)

	// The container ends; rootlessnet follows and reaps the dialer.
	ctrIn.Close()
	if status, ok := cp.wait(15 * time.Second); !ok || status != 0 {
		t.Errorf("container: status %d (exited %v)\n%s", status, ok, cp.output())
	}
	status, ok := rp.wait(10 * time.Second)
	if !ok || status != 0 {
		t.Errorf("rootlessnet: status %d (exited %v)\n%s", status, ok, rp.output())
	}
	if dialer != 0 {
		checkGone(t, dialer, "the dialer")
	}
	if s := rp.output(); strings.Contains(s, "panic") || strings.Contains(s, "level=ERROR") || strings.Contains(s, "operation not permitted") {
		t.Errorf("rootlessnet's output shows a failure:\n%s", s)
	}
}

// TestBypassIPv6: with IPv6 on, a forward from [::1] goes through the
// bypass to the guest's IPv6 address, which the guest sees as the peer,
// and carries data both ways intact.
func TestBypassIPv6(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		port := e.slirpFreePort(t, "[::1]")
		p := e.startRun(t, ctx, 0, []string{"-6", "--port-bypass", "-p", fmt.Sprintf("[::1]:%d:%d", port, bypassGuestPort)}, "bypass-server")
		waitBypassReady(t, p)
		addr := fmt.Sprintf("[::1]:%d", port)
		got, err := e.bypassWhoami(addr)
		if err != nil {
			t.Fatalf("whoami through %s: %v\n%s", addr, err, p.stderrText())
		}
		if !strings.HasPrefix(got, "["+guest6+"]:") {
			t.Errorf("the guest saw the client as %q, want its own IPv6 address [%s]:PORT", got, guest6)
		}

		e.bypassBothWays(t, addr)

		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("rootlessnet did not exit after the command\n%s", p.stderrText())
		}
		if s := p.stderrText(); strings.Contains(s, "panic") || strings.Contains(s, "level=ERROR") {
			t.Errorf("rootlessnet's stderr shows a failure:\n%s", s)
		}
	})
}
