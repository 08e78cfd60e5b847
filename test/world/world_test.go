package world

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const helperEnv = "ROOTLESSNET_WORLD_TEST_HELPER"

// helperCmd re-executes exe (a copy of the test binary) in helper mode.
// GORACE=atexit_sleep_ms=0 spares the 1 s the race runtime sleeps at exit.
func helperCmd(exe, mode string) *exec.Cmd {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0")
	return cmd
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

// helper runs in a child process started by a test.
func helper(mode string) int {
	switch mode {
	case "netns":
		link, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		dev, err := os.ReadFile("/proc/self/net/dev")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		fmt.Printf("netns=%s uid=%d uplink=%t\n", link, os.Getuid(), bytes.Contains(dev, []byte(UplinkName+":")))
		return 0
	case "ping":
		if err := ping(netip.MustParseAddr(UplinkV4)); err != nil {
			fmt.Printf("uid=%d ping: %v\n", os.Getuid(), err)
			return 3
		}
		fmt.Printf("uid=%d pong\n", os.Getuid())
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// ping sends one ICMP echo through an unprivileged ping socket.
func ping(dst netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	req := []byte{8, 0, 0, 0, 0, 0, 0, 1, 'h', 'i'} // echo request; kernel fills id and checksum
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return fmt.Errorf("sendto: %w", err)
	}
	buf := make([]byte, 128)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("recvfrom: %w", err)
	}
	if n < 8 || buf[0] != 0 || !bytes.Equal(buf[8:n], []byte("hi")) {
		return fmt.Errorf("unexpected reply % x", buf[:n])
	}
	return nil
}

func dialIn(t *testing.T, w *World, network string, ap netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	err := w.Do(func() (err error) {
		c, err = net.DialTimeout(network, ap.String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s in world: %v", network, ap, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

func TestWorldLayout(t *testing.T) {
	w := New(t)
	err := w.Do(func() error {
		up, err := netlink.LinkByName(UplinkName)
		if err != nil {
			return err
		}
		peer, err := netlink.LinkByName(UplinkPeerName)
		if err != nil {
			return err
		}
		for _, l := range []netlink.Link{up, peer} {
			if l.Type() != "veth" || l.Attrs().OperState != netlink.OperUp {
				return fmt.Errorf("%s: type %s operstate %v", l.Attrs().Name, l.Type(), l.Attrs().OperState)
			}
		}
		addrs, err := netlink.AddrList(up, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		want := map[string]bool{UplinkV4 + "/24": false, UplinkV6 + "/64": false}
		for _, a := range addrs {
			if _, ok := want[a.IPNet.String()]; ok {
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					return fmt.Errorf("%s is tentative", a.IPNet)
				}
				want[a.IPNet.String()] = true
			}
		}
		for a, ok := range want {
			if !ok {
				return fmt.Errorf("address %s missing on %s: %v", a, UplinkName, addrs)
			}
		}
		for _, dst := range []string{"192.0.2.99", "2001:db8:ffff::1"} {
			rs, err := netlink.RouteGet(net.ParseIP(dst))
			if err != nil {
				return fmt.Errorf("route to %s: %w", dst, err)
			}
			if len(rs) != 1 || rs[0].LinkIndex != up.Attrs().Index {
				return fmt.Errorf("route to %s: %+v, want dev %s", dst, rs, UplinkName)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(w.ResolvConf())
	if err != nil || string(b) != "nameserver 198.51.100.1\n" {
		t.Fatalf("resolv.conf = %q, %v", b, err)
	}
	for p, perm := range map[string]os.FileMode{w.ResolvConf(): 0o004, filepath.Dir(w.ResolvConf()): 0o005} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&perm != perm {
			t.Fatalf("%s mode %v: not usable by others", p, fi.Mode())
		}
	}
}

func TestTCPEcho(t *testing.T) {
	w := New(t)
	for _, host := range []string{UplinkV4, UplinkV6} {
		t.Run(host, func(t *testing.T) {
			ap := w.TCPEcho(t, net.JoinHostPort(host, "0"))
			if ap.Addr() != netip.MustParseAddr(host) || ap.Port() == 0 {
				t.Fatalf("TCPEcho returned %v", ap)
			}
			c := dialIn(t, w, "tcp", ap)
			data := make([]byte, 1<<20)
			rand.Read(data)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				errc <- err
			}()
			got, err := io.ReadAll(c) // EOF only because the server half-closed
			if err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echoed %d bytes, differ from the %d sent", len(got), len(data))
			}
		})
	}
}

func TestSinkWhoAmIUDP(t *testing.T) {
	w := New(t)

	sink := w.TCPSink(t, UplinkV4+":0")
	c := dialIn(t, w, "tcp", sink)
	data := make([]byte, 3<<20+7)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, SinkReply(data)) {
		t.Fatalf("sink reply %x, want %x", got, SinkReply(data))
	}

	who := w.TCPWhoAmI(t, UplinkV4+":0")
	c = dialIn(t, w, "tcp", who)
	got, err = io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.LocalAddr().String() + "\n"; string(got) != want {
		t.Fatalf("whoami said %q, want %q", got, want)
	}

	udp := w.UDPEcho(t, "["+UplinkV6+"]:0")
	c = dialIn(t, w, "udp", udp)
	for i := range 3 {
		msg := fmt.Appendf(nil, "datagram %d", i)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("udp echo %q, want %q", buf[:n], msg)
		}
	}
}

// TestNotVisibleOutside checks that the world's addresses do not exist in the
// test's own namespace without sending any packet to a real network.
func TestNotVisibleOutside(t *testing.T) {
	w := New(t)
	ap := w.TCPEcho(t, UplinkV4+":0")

	if _, err := netlink.LinkByName(UplinkName); err == nil {
		t.Fatalf("link %s visible outside the world", UplinkName)
	}
	for _, ip := range []string{UplinkV4, UplinkV6} {
		// bind() to an address that is not local fails with EADDRNOTAVAIL;
		// inside the world it succeeds. No traffic either way.
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err == nil {
			l.Close()
			t.Fatalf("%s is a local address outside the world", ip)
		}
		if !errors.Is(err, syscall.EADDRNOTAVAIL) {
			t.Fatalf("bind %s outside: %v, want EADDRNOTAVAIL", ip, err)
		}
		l, err = w.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("bind %s inside: %v", ip, err)
		}
		l.Close()
	}

	// Only dial if the machine has no route at all: otherwise the SYN would
	// leave through the real network.
	if _, err := netlink.RouteGet(net.ParseIP(UplinkV4)); err == nil {
		t.Logf("host has a route towards %s; not dialling it from outside", UplinkV4)
		return
	}
	c, err := net.DialTimeout("tcp", ap.String(), 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("dialled %v from outside the world", ap)
	}
}

func readlink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStartInWorld(t *testing.T) {
	w := New(t)
	worldNS := readlink(t, w.NetNSPath())
	ownNS := readlink(t, "/proc/thread-self/ns/net")
	if worldNS == ownNS || !strings.HasPrefix(worldNS, "net:[") {
		t.Fatalf("world netns %q, own %q", worldNS, ownNS)
	}
	exe := ExecutableCopy(t, os.Args[0])
	for _, cred := range []*syscall.Credential{nil, Nobody} {
		t.Run(fmt.Sprintf("cred=%v", cred), func(t *testing.T) {
			cmd := helperCmd(exe, "netns")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := w.Start(cmd); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("helper: %v: %s", err, stderr.Bytes())
			}
			uid := 0
			if cred != nil {
				uid = int(cred.Uid)
			}
			if want := fmt.Sprintf("netns=%s uid=%d uplink=true\n", worldNS, uid); out.String() != want {
				t.Fatalf("helper printed %q, want %q", out.String(), want)
			}
		})
	}
	// A command started normally stays in the test's namespace.
	out, err := exec.Command("/bin/sh", "-c", "readlink /proc/self/ns/net").Output()
	if err == nil && strings.TrimSpace(string(out)) != ownNS {
		t.Fatalf("plain child in %q, want %q", out, ownNS)
	}
}

func TestPingGroupRange(t *testing.T) {
	w := New(t)
	exe := ExecutableCopy(t, os.Args[0])
	run := func() (string, error) {
		cmd := helperCmd(exe, "ping")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: Nobody}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := w.Start(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		return out.String(), err
	}
	if out, err := run(); err != nil || out != "uid=65534 pong\n" {
		t.Fatalf("ping as nobody with default range: %v: %q", err, out)
	}
	if err := w.SetPingGroupRange(1, 0); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("ping as nobody with range 1 0: %v: %q", err, out)
	}
}

// TestSysctlFollowsThreadNetns documents that /proc/sys/net shows the network
// namespace of the thread that opens it.
func TestSysctlFollowsThreadNetns(t *testing.T) {
	const p = "/proc/sys/net/ipv4/ping_group_range"
	w := New(t)
	read := func() string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Error(err)
		}
		return strings.TrimSpace(string(b))
	}
	outside := read()
	if err := w.SetPingGroupRange(100, 200); err != nil {
		t.Fatal(err)
	}
	var inside string
	w.Do(func() error { inside = read(); return nil })
	if inside != "100\t200" {
		t.Fatalf("inside the world %s = %q", p, inside)
	}
	if now := read(); now != outside {
		t.Fatalf("outside %s changed from %q to %q", p, outside, now)
	}
}

func TestDNS(t *testing.T) {
	w := New(t)
	ap, log := w.DNS(t, UplinkV4+":0")
	type tc struct {
		name  string
		qtype uint16
		rcode int
		want  string
	}
	cases := []tc{
		{"example.test.", dns.TypeA, dns.RcodeSuccess, "198.51.100.7"},
		{"EXAMPLE.test.", dns.TypeAAAA, dns.RcodeSuccess, "2001:db8::7"},
		{"nope.test.", dns.TypeA, dns.RcodeNameError, ""},
	}
	n := 0
	for _, network := range []string{"udp", "tcp"} {
		for _, c := range cases {
			m := new(dns.Msg)
			m.SetQuestion(c.name, c.qtype)
			var r *dns.Msg
			err := w.Do(func() (err error) {
				cl := &dns.Client{Net: network, Timeout: 5 * time.Second}
				r, _, err = cl.Exchange(m, ap.String())
				return err
			})
			if err != nil {
				t.Fatalf("%s %s: %v", network, c.name, err)
			}
			n++
			if r.Rcode != c.rcode {
				t.Fatalf("%s %s: rcode %s", network, c.name, dns.RcodeToString[r.Rcode])
			}
			var got string
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *dns.A:
					got = rr.A.String()
				case *dns.AAAA:
					got = rr.AAAA.String()
				}
			}
			if got != c.want {
				t.Fatalf("%s %s: answer %q, want %q", network, c.name, got, c.want)
			}
			if len(r.Extra) != 1 {
				t.Fatalf("%s %s: extra %v", network, c.name, r.Extra)
			}
			if txt, ok := r.Extra[0].(*dns.TXT); !ok || len(txt.Txt) != 1 || txt.Txt[0] != DNSTXT {
				t.Fatalf("%s %s: extra %v", network, c.name, r.Extra)
			}
		}
	}
	qs := log.Queries()
	if len(qs) != n || log.Len() != n {
		t.Fatalf("log has %d queries, want %d", len(qs), n)
	}
	if q := qs[len(qs)-1]; q.Name != "nope.test." || q.Type != dns.TypeA || q.Network != "tcp" || q.From.Addr() != netip.MustParseAddr(UplinkV4) {
		t.Fatalf("last logged query %+v", q)
	}
}

func TestDoPropagates(t *testing.T) {
	w := New(t)
	want := errors.New("boom")
	if err := w.Do(func() error { return want }); err != want {
		t.Fatalf("Do returned %v", err)
	}
	func() {
		defer func() {
			if v := recover(); v != "p" {
				t.Fatalf("recovered %v", v)
			}
		}()
		w.Do(func() error { panic("p") })
	}()
	// The caller's thread is untouched, whichever it is.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := readlink(t, "/proc/thread-self/ns/net")
	w.Do(func() error { return nil })
	if after := readlink(t, "/proc/thread-self/ns/net"); after != before {
		t.Fatalf("caller thread moved from %s to %s", before, after)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestCleanup checks that a world with all its servers, used and then
// cleaned up, leaves no goroutines or file descriptors behind.
func TestCleanup(t *testing.T) {
	// Warm up lazily started runtime/net goroutines and fds (netpoll).
	t.Run("warmup", func(t *testing.T) { useEverything(t) })
	goroutines, fds := runtime.NumGoroutine(), countFDs(t)
	var nsPath string
	t.Run("world", func(t *testing.T) { nsPath = useEverything(t) })
	if t.Failed() {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, f := runtime.NumGoroutine(), countFDs(t)
		if g <= goroutines && f <= fds {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("after cleanup: %d goroutines (before %d), %d fds (before %d)\n%s", g, goroutines, f, fds, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(nsPath); err == nil {
		if l, _ := os.Readlink(nsPath); strings.HasPrefix(l, "net:[") {
			t.Fatalf("%s still refers to a netns after cleanup", nsPath)
		}
	}
}

func useEverything(t *testing.T) string {
	w := New(t)
	echo := w.TCPEcho(t, UplinkV4+":0")
	sink := w.TCPSink(t, UplinkV4+":0")
	who := w.TCPWhoAmI(t, UplinkV4+":0")
	udp := w.UDPEcho(t, UplinkV4+":0")
	dnsAP, _ := w.DNS(t, UplinkV4+":0")

	// Leave an echo connection open: cleanup must close it.
	c := dialIn(t, w, "tcp", echo)
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	for _, ap := range []netip.AddrPort{sink, who} {
		c := dialIn(t, w, "tcp", ap)
		c.(*net.TCPConn).CloseWrite()
		io.ReadAll(c)
	}
	u := dialIn(t, w, "udp", udp)
	u.Write([]byte("x"))
	u.Read(buf)
	m := new(dns.Msg)
	m.SetQuestion(DNSName, dns.TypeA)
	for _, network := range []string{"udp", "tcp"} {
		err := w.Do(func() error {
			_, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, dnsAP.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return w.NetNSPath()
}
