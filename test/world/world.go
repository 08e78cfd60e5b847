// Package world builds the "fake outside world" that rootlessnet's
// end-to-end tests run against (see docs/testing.md): a private network
// namespace with an interface "uplink" carrying TEST-NET addresses, default
// routes onto it, and small servers (echo, sink, who-am-i, DNS) bound there.
//
// rootlessnet runs inside the world (via World.Start), so its host-side
// sockets reach only the world and never the machine's real network.
//
// Building the world needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN in the
// initial user namespace); New calls t.Skip otherwise.
package world

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addresses of the world's uplink.
const (
	UplinkName     = "uplink"
	UplinkPeerName = "uplink-peer"
	UplinkV4       = "198.51.100.1"
	UplinkV6       = "2001:db8::1"
)

// Nobody is the credential unprivileged test runs use.
var Nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// World is a fake outside world: a network namespace owned by the test.
type World struct {
	mu     sync.RWMutex
	ns     *os.File // fd of the world's network namespace; nil once closed
	nsPath string
	dir    string // 0755 temp dir holding resolv.conf
	resolv string
}

// New creates the fake outside world and registers its teardown with
// t.Cleanup. It calls t.Skip when not running as root.
func New(t testing.TB) *World {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to build the fake world")
	}

	ns, err := newNetNS()
	if err != nil {
		t.Fatalf("world: create network namespace: %v", err)
	}
	w := &World{
		ns:     ns,
		nsPath: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.Fd()),
	}
	// Registered first so it runs last: servers registered later by the
	// caller (and their sockets) are gone before the namespace fd closes.
	t.Cleanup(func() {
		if err := w.close(); err != nil {
			t.Errorf("world: close: %v", err)
		}
	})

	if err := w.Do(setup); err != nil {
		t.Fatalf("world: configure: %v", err)
	}

	dir, err := os.MkdirTemp("", "rootlessnet-world-")
	if err != nil {
		t.Fatalf("world: %v", err)
	}
	w.dir = dir
	// MkdirTemp creates 0700; unprivileged helpers must be able to read
	// resolv.conf.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("world: %v", err)
	}
	w.resolv = filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(w.resolv, []byte("nameserver "+UplinkV4+"\n"), 0o644); err != nil {
		t.Fatalf("world: %v", err)
	}
	return w
}

// newNetNS creates a network namespace and returns an fd referring to it.
// The work happens on a dedicated goroutine whose thread is locked: if the
// thread cannot be switched back to its original namespace the goroutine
// exits still locked and the runtime discards the thread.
func newNetNS() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("unshare(CLONE_NEWNET): %w", err)}
			return
		}
		// /proc/self/ns/net would name the main thread's namespace, not
		// this thread's.
		f, openErr := os.Open("/proc/thread-self/ns/net")
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread is in the wrong namespace and dies
			// with this goroutine.
			if f != nil {
				f.Close()
			}
			ch <- result{err: fmt.Errorf("setns back to original netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{f: f, err: openErr}
	}()
	r := <-ch
	return r.f, r.err
}

// setup runs inside the world's namespace.
func setup() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}

	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: UplinkName},
		PeerName:  UplinkPeerName,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", UplinkName, UplinkPeerName, err)
	}
	up, err := netlink.LinkByName(UplinkName)
	if err != nil {
		return err
	}
	peer, err := netlink.LinkByName(UplinkPeerName)
	if err != nil {
		return err
	}

	for _, a := range []struct {
		cidr  string
		flags int
	}{
		{UplinkV4 + "/24", 0},
		// Without NODAD the address stays "tentative" (unusable for
		// bind/connect) for about a second after the link comes up.
		{UplinkV6 + "/64", unix.IFA_F_NODAD},
	} {
		addr, err := netlink.ParseAddr(a.cidr)
		if err != nil {
			return err
		}
		addr.Flags = a.flags
		if err := netlink.AddrAdd(up, addr); err != nil {
			return fmt.Errorf("addr %s: %w", a.cidr, err)
		}
	}

	// Bring the peer up first: a veth has carrier only when both ends are
	// up, and routes on a link without carrier are marked linkdown.
	if err := netlink.LinkSetUp(peer); err != nil {
		return fmt.Errorf("%s up: %w", UplinkPeerName, err)
	}
	if err := netlink.LinkSetUp(up); err != nil {
		return fmt.Errorf("%s up: %w", UplinkName, err)
	}

	for _, dst := range []string{"0.0.0.0/0", "::/0"} {
		_, n, err := net.ParseCIDR(dst)
		if err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: up.Attrs().Index, Dst: n, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s dev %s: %w", dst, UplinkName, err)
		}
	}

	return writePingGroupRange(0, 2147483647)
}

// writePingGroupRange must run on a thread inside the target namespace:
// /proc/sys/net/* shows the network namespace of the thread that opens it.
func writePingGroupRange(lo, hi uint32) error {
	return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", fmt.Appendf(nil, "%d %d", lo, hi), 0)
}

func (w *World) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	if w.ns != nil {
		errs = append(errs, w.ns.Close())
		w.ns = nil
	}
	if w.dir != "" {
		errs = append(errs, os.RemoveAll(w.dir))
		w.dir = ""
	}
	return errors.Join(errs...)
}

// Do runs fn on a locked OS thread switched into the world's network
// namespace, then switches the thread back. Sockets created by fn stay in the
// world for their whole life and may be used from any goroutine afterwards.
//
// fn runs on its own goroutine (so a thread that cannot be switched back is
// discarded rather than handed back to the caller); it must therefore not
// call t.FailNow/t.Fatal. Goroutines started by fn do NOT run in the world.
// A panic in fn is re-raised in the caller.
func (w *World) Do(fn func() error) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.ns == nil {
		return errors.New("world: closed")
	}
	nsfd := int(w.ns.Fd())

	type result struct {
		err      error
		panicked bool
		panicVal any
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("world: open own netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("world: setns into world: %w", err)}
			return
		}
		var r result
		func() {
			defer func() {
				if v := recover(); v != nil {
					r.panicked, r.panicVal = true, v
				}
			}()
			r.err = fn()
		}()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: when this goroutine returns the
			// runtime terminates the thread instead of reusing it.
			if r.err == nil && !r.panicked {
				r.err = fmt.Errorf("world: setns back: %w", err)
			}
			ch <- r
			return
		}
		runtime.UnlockOSThread()
		ch <- r
	}()
	r := <-ch
	if r.panicked {
		panic(r.panicVal)
	}
	return r.err
}

// Listen is net.Listen inside the world.
func (w *World) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := w.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket is net.ListenPacket inside the world.
func (w *World) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := w.Do(func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// Start starts cmd inside the world: the child is forked from a thread that
// is in the world's namespace and inherits it. The caller still owns cmd
// (Wait, Process.Kill).
func (w *World) Start(cmd *exec.Cmd) error {
	return w.Do(cmd.Start)
}

// ResolvConf returns the path of a resolv.conf naming the world's DNS
// address (198.51.100.1). The file and its directory are world-readable.
func (w *World) ResolvConf() string { return w.resolv }

// NetNSPath returns a path that refers to the world's network namespace
// while the World is open (/proc/<pid>/fd/<fd>). Only processes allowed to
// ptrace this process (root, same uid) can open it.
func (w *World) NetNSPath() string { return w.nsPath }

// SetPingGroupRange sets net.ipv4.ping_group_range inside the world. New sets
// it to "0 2147483647" (everyone may open ICMP ping sockets); use (1, 0) to
// forbid ping sockets.
func (w *World) SetPingGroupRange(lo, hi uint32) error {
	return w.Do(func() error { return writePingGroupRange(lo, hi) })
}
