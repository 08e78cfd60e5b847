package launcher

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/userns"
	_ "github.com/rootlessnet/rootlessnet/userns/nsenter"
)

// TestMain plays the children that Spawn re-executes this binary as.
func TestMain(m *testing.M) {
	if conn, role, ok := userns.ChildConn(); ok {
		os.Exit(ChildMain(conn, role))
	}
	os.Exit(m.Run())
}

// startSelfDialer starts a dialer that joins this process's own network
// namespace (joining needs CAP_SYS_ADMIN: root only), so that it reaches
// the loopback listeners of the test. The end-to-end tests cover the
// container's namespaces.
func startSelfDialer(t *testing.T) *Dialer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("joining a network namespace needs root here")
	}
	netns, err := userns.OpenNetNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	d, err := StartDialer(DialerOptions{JoinNet: netns, LogLevel: "debug", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// openFDs maps this process's open descriptors to what they point at.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[string]string{}
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds[e.Name()] = target
	}
	return fds
}

// checkNoNewFDs fails on descriptors open now that were not before: a
// leak. Fewer is fine (the runtime or the test framework may have closed
// one of theirs meanwhile, as seen once in CI).
func checkNoNewFDs(t *testing.T, before map[string]string) {
	t.Helper()
	for fd, target := range openFDs(t) {
		if before[fd] != target {
			t.Errorf("descriptor %s (%s) left open", fd, target)
		}
	}
}

func TestBypassDialer(t *testing.T) {
	d := startSelfDialer(t)
	before := openFDs(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// Not io.Copy(c, c): its splice pipes stay pooled, as open fds.
		if b, err := io.ReadAll(c); err == nil {
			c.Write(b)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("got a %T, want *net.TCPConn", c)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "ping" {
		t.Errorf("echo: %q, %v", b, err)
	}
	c.Close()

	// Refused: the errno comes through.
	l2, _ := net.Listen("tcp4", "127.0.0.1:0")
	closed := l2.Addr().String()
	l2.Close()
	if _, err := d.DialContext(ctx, "tcp4", closed); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to a closed port: %v, want connection refused", err)
	}
	// Names are not looked up; bad networks are refused.
	if _, err := d.DialContext(ctx, "tcp", "localhost:80"); err == nil {
		t.Error("dial to a name succeeded")
	}
	if _, err := d.DialContext(ctx, "udp", l.Addr().String()); err == nil {
		t.Error("dial over udp succeeded")
	}
	l.Close()
	checkNoNewFDs(t, before)

	pid := d.Pid()
	d.Close()
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("the dialer %d is still there after Close: %v", pid, err)
	}
	if _, err := d.DialContext(ctx, "tcp4", closed); !errors.Is(err, ErrDialerGone) {
		t.Errorf("dial after Close: %v, want ErrDialerGone", err)
	}
}

// fullListener returns a listener whose accept queue is full: further
// SYNs to it are dropped, and a connect to it hangs.
func fullListener(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
	for range 8 {
		c, err := net.DialTimeout("tcp4", addr, 300*time.Millisecond)
		if err != nil {
			return addr // this one hung: the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill a listener's accept queue")
	return ""
}

// TestBypassDialerConcurrent: a connect that hangs holds no other back,
// and giving up on it returns at once and leaks nothing.
func TestBypassDialerConcurrent(t *testing.T) {
	d := startSelfDialer(t)
	slow := fullListener(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before := openFDs(t)

	slowCtx, cancelSlow := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelSlow()
	slowDone := make(chan error, 1)
	go func() {
		c, err := d.DialContext(slowCtx, "tcp4", slow)
		if c != nil {
			c.Close()
		}
		slowDone <- err
	}()
	time.Sleep(200 * time.Millisecond) // the slow connect is in flight

	for i := range 5 {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := d.DialContext(ctx, "tcp4", l.Addr().String())
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.Close()
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("dial %d took %v behind a hanging one", i, el)
		}
		if a, err := l.Accept(); err == nil {
			a.Close()
		}
	}
	select {
	case err := <-slowDone:
		t.Fatalf("the hanging connect ended early: %v", err)
	default:
	}
	start := time.Now()
	cancelSlow()
	if err := <-slowDone; !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled dial: %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("cancelling took %v", el)
	}
	checkNoNewFDs(t, before)
}

// TestStartDialerFails: a dialer that cannot join its namespaces fails
// StartDialer at once with the child's reason, and leaves no descriptor
// or process behind.
func TestStartDialerFails(t *testing.T) {
	notNS, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer notNS.Close()
	before := openFDs(t)
	start := time.Now()
	d, err := StartDialer(DialerOptions{JoinNet: notNS, LogLevel: "debug", Log: slog.New(slog.DiscardHandler)})
	if err == nil {
		d.Close()
		t.Fatal("StartDialer joined /dev/null as a network namespace")
	}
	t.Logf("StartDialer: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(err.Error(), "network namespace") {
		t.Errorf("the error %q does not give the child's reason (it could not join the network namespace)", err)
	}
	if took := time.Since(start); took >= dialerHandshakeTimeout {
		t.Errorf("StartDialer took %v: it waited for the handshake timeout instead of the child's exit", took)
	}
	checkNoNewFDs(t, before)
	// The child was reaped: no zombie among our children.
	if kids, _ := os.ReadFile("/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/children"); len(kids) > 0 {
		t.Errorf("children left: %s", kids)
	}
}
