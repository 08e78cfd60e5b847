package e2e

// A multi-queue TAP (--queues N): the container's flows spread over the
// TAP's queues, each read by a loop of rootlessnet's own. Many flows at
// once both ways, each checked end to end, through the fast path and
// through the netstack, published ports into the container, the attach
// form with the sandbox (the queues' fds pass through its re-execution),
// and the fallback to one queue on a TAP that exists without
// IFF_MULTI_QUEUE.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func init() {
	// tcp-parallel ECHO SINK N SIZE: N connections at once, the even
	// ones to the echo server at ECHO (SIZE bytes both ways at once),
	// the odd ones to the sink at SINK (SIZE bytes, its SHA-256 back);
	// each flow's data is its own. Then "tap-queues Q" for tap0.
	extraHelpers["tcp-parallel"] = func(args []string) error {
		if len(args) != 4 {
			return errors.New("usage: tcp-parallel ECHO SINK N SIZE")
		}
		if err := tcpParallel(args[0], args[1], args[2], args[3]); err != nil {
			return err
		}
		return printTapQueues("tap0")
	}
	// tcp-parallel-settle ECHO SINK N SIZE: tcp-parallel, then, 2 s
	// later, "tap-queues Q" again: --queues auto detaches its queues a
	// second after the flows end.
	extraHelpers["tcp-parallel-settle"] = func(args []string) error {
		if err := extraHelpers["tcp-parallel"](args); err != nil {
			return err
		}
		time.Sleep(2 * time.Second)
		return printTapQueues("tap0")
	}
	// mq-newns ARGS: mq-container in new user+net namespaces.
	extraHelpers["mq-newns"] = func([]string) error { return newNSMode("mq-container") }
	// mq-container PERSIST ECHO SINK N SIZE: print "PID n"; with
	// PERSIST "persist" make tap0 first, persistent and with one queue
	// (as rootlesskit's); wait for tap0 to be configured, then as
	// tcp-parallel.
	extraHelpers["mq-container"] = mqContainer
}

// patternOf is flow i's payload: a pattern of its own, so that data of
// one flow delivered to another shows.
func patternOf(i, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(i)+100, 7))
	for j := 0; j+8 <= n; j += 8 {
		binary.LittleEndian.PutUint64(b[j:], r.Uint64())
	}
	return b
}

func tcpParallel(echo, sink, count, size string) error {
	n, err := strconv.Atoi(count)
	if err != nil {
		return err
	}
	sz, err := strconv.Atoi(size)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	opts := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				opts[i], errs[i] = parallelEcho(echo, patternOf(i, sz))
			} else {
				opts[i], errs[i] = parallelSink(sink, patternOf(i, sz))
			}
			if errs[i] != nil {
				errs[i] = fmt.Errorf("flow %d: %w", i, errs[i])
			}
		}()
	}
	wg.Wait()
	for _, o := range opts {
		if o != "" {
			fmt.Println("tcp-options", o)
		}
	}
	return errors.Join(errs...)
}

// parallelEcho sends msg to an echo server while it reads the echo,
// half-closes, and wants msg back and then EOF.
func parallelEcho(addr string, msg []byte) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	opts := tcpOptions(c)
	c.SetDeadline(time.Now().Add(120 * time.Second))
	got, werr, err := exchange(c, msg)
	if werr != nil {
		return opts, fmt.Errorf("echo write: %w (read %d bytes; %s)", werr, len(got), tcpState(c))
	}
	if err != nil {
		return opts, fmt.Errorf("echo read after %d bytes: %w (%s)", len(got), err, tcpState(c))
	}
	if !bytes.Equal(got, msg) {
		return opts, fmt.Errorf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
	return opts, nil
}

// parallelSink sends msg to the sink, half-closes, and wants its SHA-256
// and length back.
func parallelSink(addr string, msg []byte) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	opts := tcpOptions(c)
	c.SetDeadline(time.Now().Add(120 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return opts, fmt.Errorf("sink write: %w (%s)", err, tcpState(c))
	}
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil {
		return opts, fmt.Errorf("sink reply: %w (%s)", err, tcpState(c))
	}
	sum := sha256.Sum256(msg)
	if want := binary.BigEndian.AppendUint64(sum[:], uint64(len(msg))); !bytes.Equal(reply, want) {
		return opts, fmt.Errorf("sink reply %x, want %x", reply, want)
	}
	return opts, nil
}

// printTapQueues prints "tap-queues Q": the queues attached to name (1
// for a TAP without IFF_MULTI_QUEUE).
func printTapQueues(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	q := 0
	if tt, ok := l.(*netlink.Tuntap); ok {
		q = tt.Queues // told of multi-queue TAPs only
		if tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 {
			q = 1
		}
	}
	fmt.Println("tap-queues", q)
	return nil
}

func mqContainer(args []string) error {
	if len(args) != 5 {
		return errors.New("usage: mq-container PERSIST ECHO SINK N SIZE")
	}
	if args[0] == "persist" {
		if err := makePersistentTap("tap0"); err != nil {
			return err
		}
	}
	fmt.Printf("PID %d\n", os.Getpid())
	if err := slirpWaitTap("tap0", 20*time.Second); err != nil {
		return err
	}
	if err := tcpParallel(args[1], args[2], args[3], args[4]); err != nil {
		return err
	}
	return printTapQueues("tap0")
}

// makePersistentTap makes name a persistent TAP with one queue (no
// IFF_MULTI_QUEUE), as rootlesskit leaves tap0 for slirp4netns.
func makePersistentTap(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	return unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1)
}

// parallelSize is each flow's transfer in the multi-queue tests.
const parallelSize = 8 << 20

// checkQueues wants out to report q queues on tap0.
func checkQueues(t *testing.T, out string, q int) {
	t.Helper()
	if want := fmt.Sprintf("tap-queues %d\n", q); !strings.Contains(out, want) {
		t.Errorf("the container's tap0 does not have %d queues (want %q):\n%s", q, want, out)
	}
}

// TestMultiQueueTCP: with --queues 2, eight flows at once both ways reach
// the world intact, on the fast path and on the netstack, with and
// without the offloads; UDP through the shortcut too.
func TestMultiQueueTCP(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		sink := e.w.TCPSink(t, "198.51.100.1:0")
		for _, tc := range []struct {
			tcp   []string
			flags []string
			n     int
			size  int
		}{
			{fastPath, nil, 8, parallelSize},
			// Fewer and smaller: at MTU 1500 without offloads eight
			// such flows at once stalled now and then for 15 s to 2
			// min, with one queue as with two (not explained yet).
			{fastPath, []string{"--mtu", "1500", "--offload=false"}, 4, 1 << 20},
			{netstackPath, nil, 8, parallelSize},
		} {
			args := []string{echo.String(), sink.String(), fmt.Sprint(tc.n), fmt.Sprint(tc.size)}
			flags := withFlags(tc.tcp, append([]string{"--queues", "2", "--log-level", "debug"}, tc.flags...)...)
			began := time.Now()
			r := e.run(flags, "tcp-parallel", args...)
			t.Logf("%v: %v", flags, time.Since(began).Round(time.Millisecond))
			if r.status != 0 || !strings.Contains(r.stdout, "OK") {
				t.Fatalf("%v: status %d\nstdout:\n%s\nstderr:\n%s", flags, r.status, r.stdout, r.stderr)
			}
			checkCarrier(t, tc.tcp, r.stdout)
			checkQueues(t, r.stdout, 2)
			if !strings.Contains(r.stderr, `msg="multi-queue TAP" queues=2`) {
				t.Errorf("%v: rootlessnet does not serve two queues:\n%s", flags, r.stderr)
			}
		}
		uecho := e.w.UDPEcho(t, "198.51.100.1:0")
		for _, mode := range []string{"udp-echo", "udp-stream", "udp-runs"} {
			began := time.Now()
			e.mustOK([]string{"--queues", "2"}, mode, uecho.String())
			t.Logf("%s: %v", mode, time.Since(began).Round(time.Millisecond))
		}
	})
}

// TestMultiQueueAuto: with --queues auto, the TAP has two queues but
// only one attached until several flows are busy; then the second is
// attached and flows move to it while they carry data, which arrives
// intact; a second after they end it is detached again. Also confined
// (seccomp must let the queue ioctl through) and on the netstack path,
// where nothing is attached (the governor follows fast-path flows only).
func TestMultiQueueAuto(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("--queues auto opens one queue per CPU: one here")
	}
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		sink := e.w.TCPSink(t, "198.51.100.1:0")
		// Four flows of 64 MiB each way last several samples of the
		// governor (100 ms) even at loopback speed.
		args := []string{echo.String(), sink.String(), "4", fmt.Sprint(64 << 20)}
		for _, tc := range []struct {
			name   string
			flags  []string
			attach bool
		}{
			{"fast path", withFlags(fastPath), true},
			{"confined", withFlags(fastPath, "--enable-sandbox", "--enable-seccomp"), true},
			{"netstack", withFlags(netstackPath), false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				flags := append([]string{"--queues", "auto", "--log-level", "debug"}, tc.flags...)
				r := e.run(flags, "tcp-parallel-settle", args...)
				if r.status != 0 || !strings.Contains(r.stdout, "OK") {
					t.Fatalf("%v: status %d\nstdout:\n%s\nstderr:\n%s", flags, r.status, r.stdout, r.stderr)
				}
				if !strings.Contains(r.stderr, `msg="multi-queue TAP" queues=2`) {
					t.Fatalf("rootlessnet does not serve two queues:\n%s", r.stderr)
				}
				attached := strings.Contains(r.stderr, `msg="TAP queues attached" active=2`)
				detached := strings.Contains(r.stderr, `msg="TAP queues detached" active=1`)
				if attached != tc.attach || detached != tc.attach {
					t.Errorf("queues attached %v and detached %v, want %v:\n%s", attached, detached, tc.attach, r.stderr)
				}
				// Four busy flows on one queue: two of them move.
				if tc.attach && !regexp.MustCompile(`msg="TAP queues attached" active=2 "busy flows"=[2-9] moved=[1-9]`).MatchString(r.stderr) {
					t.Errorf("no flow moved to the queue attached:\n%s", r.stderr)
				}
				// After the flows, one queue again.
				if i := strings.LastIndex(r.stdout, "tap-queues"); i < 0 || !strings.HasPrefix(r.stdout[i:], "tap-queues 1\n") {
					t.Errorf("tap0 has not one queue attached at the end:\n%s", r.stdout)
				}
				if strings.Contains(r.stderr, "level=WARN") {
					t.Errorf("warnings:\n%s", r.stderr)
				}
			})
		}
	})
}

// TestMultiQueuePublish: with --queues 2, clients of a published port at
// once, each echoed intact (published flows take the queues in turn).
func TestMultiQueuePublish(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		lo := e.slirpFreePort(t, "127.0.0.1")
		p, in := e.runServer(t, ctx, "publish-echo-server", withFlags(fastPath, "--queues", "2",
			"-p", fmt.Sprintf("127.0.0.1:%d:8080", lo))...)
		addr := fmt.Sprintf("127.0.0.1:%d", lo)
		e.publishedEcho(t, fastPath, p, addr, "", "10.0.2.2:", 0, false) // warm-up (publishWarmUp)
		var wg sync.WaitGroup
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.publishedEcho(t, fastPath, p, addr, "", "10.0.2.2:", 4<<20, true)
			}()
		}
		wg.Wait()
		slirpFinish(t, p, in)
	})
}

// mqContainer starts mq-container with args in new namespaces made by the
// env's user, and returns its pid once it printed it.
func (e *env) mqContainer(t *testing.T, ctx context.Context, args ...string) (int, *slirpProc) {
	t.Helper()
	ctr := e.commandPath(ctx, e.helper)
	ctr.Env = append(ctr.Env, helperEnv+"=mq-newns", "RLN_ARGS="+strings.Join(args, " "))
	cp := e.slirpStart(t, ctr)
	if !cp.stdout.waitFor("\n", cp, 20*time.Second) {
		t.Fatalf("no PID from the container\n%s", cp.output())
	}
	var pid int
	if _, err := fmt.Sscanf(cp.stdout.String(), "PID %d", &pid); err != nil {
		t.Fatalf("container said %q: %v", cp.stdout.String(), err)
	}
	return pid, cp
}

// TestMultiQueueAttach: the attach form with --queues 2 and the sandbox
// (the queues' fds pass through its re-execution), and on a TAP that
// exists without IFF_MULTI_QUEUE, where it falls back to one queue with a
// warning.
func TestMultiQueueAttach(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		sink := e.w.TCPSink(t, "198.51.100.1:0")
		for _, tc := range []struct {
			name    string
			persist string
			flags   []string
			queues  int
			asked   string // --queues
		}{
			{"sandbox", "new", []string{"--enable-sandbox", "--enable-seccomp"}, 2, "2"},
			{"persistent single-queue TAP", "persist", nil, 1, "2"},
			// auto (the default) takes one queue without a warning.
			{"persistent single-queue TAP, auto", "persist", nil, 1, "auto"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				pid, cp := e.mqContainer(t, ctx, tc.persist, echo.String(), sink.String(), "4", fmt.Sprint(parallelSize))
				rn := e.command(ctx, append([]string{"--resolv-conf", e.w.ResolvConf(), "--netns", fmt.Sprintf("/proc/%d/ns/net", pid), "--queues", tc.asked, "--log-level", "debug"}, tc.flags...)...)
				rp := e.slirpStart(t, rn)
				status, ok := cp.wait(90 * time.Second)
				if !ok || status != 0 || !strings.Contains(cp.stdout.String(), "OK") {
					t.Fatalf("container: status %d (exited %v)\ncontainer %s\nrootlessnet %s", status, ok, cp.output(), rp.output())
				}
				checkCarrier(t, fastPath, cp.stdout.String())
				checkQueues(t, cp.stdout.String(), tc.queues)
				warned := strings.Contains(rp.stderr.String(), "one queue instead of 2")
				if tc.queues == 1 && tc.asked != "auto" && !warned {
					t.Errorf("no warning of the fallback to one queue:\n%s", rp.output())
				}
				if (tc.queues == 2 || tc.asked == "auto") && warned {
					t.Errorf("a fallback warning with two queues:\n%s", rp.output())
				}
			})
		}
	})
}
