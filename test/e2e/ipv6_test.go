package e2e

// IPv6 (-6): NAT66 through host sockets, the gateway to the host's ::1,
// DNS over fd00::3 with AAAA answers and an IPv6 upstream, ICMPv6 echo
// without forged replies, prompt refusals when the host has no route,
// published ports on IPv6 host addresses with the source kept, duplicate
// address detection that succeeds, and SLAAC from router advertisements.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/test/world"
)

const (
	guest6   = "fd00::100"
	gateway6 = "fd00::2"
	dns6     = "fd00::3"
	// gatewayLinkLocal is the stack's fe80:: address, from its MAC
	// 52:55:0a:00:02:02 (EUI-64).
	gatewayLinkLocal = "fe80::5055:aff:fe00:202"
)

func init() {
	// v6-suite ECHO UDPECHO LOECHOPORT LOUDPPORT [tcp]: every outbound
	// check over IPv6, in one container; with "tcp", those of TCP (DNS
	// included: it asks over TCP too).
	extraHelpers["v6-suite"] = v6Suite
	// newns6 ECHO: new user+net namespaces running slaac-client.
	extraHelpers["newns6"] = func(args []string) error { return newNSMode("slaac-client") }
	// slaac-client ECHO: print PID, bring tap0 up unconfigured, wait for
	// a SLAAC address and a default route from router advertisements,
	// then a TCP round trip to ECHO.
	extraHelpers["slaac-client"] = slaacClient
	// slaac-only ECHO: as slaac-client, in a namespace someone else
	// (rootlesskit) set up.
	extraHelpers["slaac-only"] = func(args []string) error { return slaacRoundTrip(args[0], 30*time.Second) }
}

// v6Env is an env with the servers of the IPv6 tests.
type v6Env struct {
	*env
	echo, udpEcho, loEcho, loUDP netip.AddrPort
	resolv                       string
	dnsLog                       *world.DNSLog
}

func TestIPv6Outbound(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		v := newV6Env(t, e)
		suite := []string{v.echo.String(), v.udpEcho.String(), fmt.Sprint(v.loEcho.Port()), fmt.Sprint(v.loUDP.Port())}
		if isFast(tcp) {
			// UDP and ICMP are the same with the flag: the TCP steps.
			suite = append(suite, "tcp")
		}
		out := e.mustTCP(tcp, []string{"-6", "--resolv-conf", v.resolv}, "v6-suite", suite...)
		for _, want := range []string{
			"udp rcode=NOERROR AAAA=" + world.DNSAddrV6.String(),
			"tcp rcode=NOERROR AAAA=" + world.DNSAddrV6.String(),
			"resolv.conf has " + dns6,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("want %q in:\n%s", want, out)
			}
		}
		if v.dnsLog.Len() < 2 {
			t.Errorf("the IPv6 upstream saw %d queries, want 2", v.dnsLog.Len())
		}
		// The gateway's ::1 is closed by --disable-host-loopback, TCP
		// and UDP alike.
		e.mustOK(withFlags(tcp, "-6", "--disable-host-loopback"), "tcp-refused", fmt.Sprintf("[%s]:%d", gateway6, v.loEcho.Port()))
		e.mustOK(withFlags(tcp, "-6", "--disable-host-loopback"), "udp-refused", fmt.Sprintf("[%s]:%d", gateway6, v.loUDP.Port()))
		// A large transfer both ways over IPv6, at the default MTU and
		// at 1500.
		for _, mtu := range []string{"65520", "1500"} {
			e.mustTCP(tcp, []string{"-6", "--mtu", mtu}, "tcp-echo", v.echo.String(), fmt.Sprint(16<<20))
		}
	})
}

// newV6Env adds to e's world the -6 servers: echoes on 2001:db8::1 and on
// the world's ::1, and a DNS server reached over IPv6 as the only
// upstream.
func newV6Env(t *testing.T, e *env) *v6Env {
	v := &v6Env{env: e}
	v.echo = e.w.TCPEcho(t, "[2001:db8::1]:0")
	v.udpEcho = e.w.UDPEcho(t, "[2001:db8::1]:0")
	v.loEcho = e.w.TCPEcho(t, "[::1]:0")
	v.loUDP = e.w.UDPEcho(t, "[::1]:0")
	_, v.dnsLog = e.w.DNS(t, "[2001:db8::1]:53")
	v.resolv = filepath.Join(e.scratch, "resolv6.conf")
	if err := os.WriteFile(v.resolv, []byte("nameserver "+world.UplinkV6+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestIPv6PingNoForgedRepliesAndNoRoute(t *testing.T) {
	e := newEnv(t, world.Nobody)
	// A dead address on the world's link: no reply may come back.
	if r := e.run([]string{"-6"}, "ping", "2001:db8::99"); r.status == 0 {
		t.Fatalf("ping to a dead IPv6 address got a reply:\n%s", r.stdout)
	}
	// Without ping sockets: no reply from a live address either.
	if err := e.w.SetPingGroupRange(1, 0); err != nil {
		t.Fatal(err)
	}
	if r := e.run([]string{"-6"}, "ping", world.UplinkV6); r.status == 0 {
		t.Fatalf("ping6 with ping sockets disabled got a reply:\n%s", r.stdout)
	}
	// The host has no IPv6 route: refusals arrive at once, no hang.
	if err := e.w.Do(func() error {
		up, err := netlink.LinkByName(world.UplinkName)
		if err != nil {
			return err
		}
		_, all, _ := net.ParseCIDR("::/0")
		return netlink.RouteDel(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: all, Scope: netlink.SCOPE_LINK})
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.mustOK([]string{"-6"}, "tcp-refused", "[2001:db8:ffff::1]:80")
	e.mustOK([]string{"-6"}, "udp-refused", "[2001:db8:ffff::1]:53")
	t.Logf("refusals without an IPv6 route took %v (two runs)", time.Since(start))
}

// TestIPv6Publish runs on both TCP paths: published TCP ports take the
// fast path over IPv6 too, with the client's address kept.
func TestIPv6Publish(t *testing.T) {
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		lo := e.slirpFreePort(t, "[::1]")
		loUDP := e.slirpFreePort(t, "[::1]") // free for TCP; almost surely for UDP too
		any := e.slirpFreePort(t, "[::]")
		v4 := e.slirpFreePort(t, "0.0.0.0")
		sock := filepath.Join(e.scratch, "api.sock")
		p, in := e.slirpRunServer(t, ctx, withFlags(tcp, "-6", "-a", sock,
			"-p", fmt.Sprintf("[::1]:%d:8080", lo),
			"-p", fmt.Sprintf("[::]:%d:8080", any),
			"-p", fmt.Sprintf("%d:8080", v4),
			"-p", fmt.Sprintf("[::1]:%d:8081/udp", loUDP))...)

		// check also wants the path tcp selects to carry the connection.
		check := func(addr, local, wantPrefix string) {
			t.Helper()
			e.publishedWhoami(t, tcp, p, addr, local, wantPrefix)
		}
		e.publishWarmUp(t, p, fmt.Sprintf("[::1]:%d", lo))
		// A loopback client appears as the IPv6 gateway.
		check(fmt.Sprintf("[::1]:%d", lo), "", "["+gateway6+"]:")
		// A client with a real IPv6 address keeps it.
		check(fmt.Sprintf("[%s]:%d", world.UplinkV6, any), world.UplinkV6, "["+world.UplinkV6+"]:")
		// IPv4 forwards are as before: no host address means 0.0.0.0.
		check(fmt.Sprintf("%s:%d", world.UplinkV4, v4), world.UplinkV4, world.UplinkV4+":")
		// UDP over IPv6: a loopback client appears as the gateway.
		var got string
		err := e.w.Do(func() error {
			c, err := net.Dial("udp", fmt.Sprintf("[::1]:%d", loUDP))
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 512)
			for i := 0; i < 5; i++ {
				c.Write([]byte("who?"))
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if n, err := c.Read(buf); err == nil {
					got = string(buf[:n])
					return nil
				}
			}
			return errors.New("no reply")
		})
		if err != nil || !strings.HasPrefix(got, "["+gateway6+"]:") {
			t.Errorf("published UDP [::1]:%d: got %q, %v; want [%s]:PORT", loUDP, got, err, gateway6)
		}
		if _, err := e.slirpWhoami(fmt.Sprintf("[::1]:%d", v4), ""); err == nil {
			t.Errorf("-p %d:8080 also listens on IPv6; want 0.0.0.0 only, as slirp4netns", v4)
		}

		// The API takes IPv6 host and guest addresses.
		apiPort := e.slirpFreePort(t, "[::1]")
		req := fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":%d,"guest_addr":%q,"guest_port":8080}}`, apiPort, guest6)
		if m, raw, err := slirpAPICall(sock, req); err != nil || m["return"] == nil {
			t.Fatalf("add_hostfwd with IPv6 addresses: %v %s", err, raw)
		}
		check(fmt.Sprintf("[::1]:%d", apiPort), "", "["+gateway6+"]:")
		// An IPv6 host address into the IPv4 guest address, by request.
		v4gPort := e.slirpFreePort(t, "[::1]")
		req = fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":%d,"guest_addr":"10.0.2.100","guest_port":8080}}`, v4gPort)
		if m, raw, err := slirpAPICall(sock, req); err != nil || m["return"] == nil {
			t.Fatalf("add_hostfwd [::1] -> 10.0.2.100: %v %s", err, raw)
		}
		check(fmt.Sprintf("[::1]:%d", v4gPort), "", "10.0.2.2:")
		slirpFinish(t, p, in)
	})
}

func TestIPv6GuestAddressWithoutIPv6(t *testing.T) {
	e := newEnv(t, nil)
	sock := filepath.Join(e.scratch, "api.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, in := e.slirpRunServer(t, ctx, "-a", sock)
	port := e.slirpFreePort(t, "[::1]")
	req := fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":%d,"guest_addr":%q,"guest_port":8080}}`, port, guest6)
	m, raw, err := slirpAPICall(sock, req)
	if err != nil {
		t.Fatal(err)
	}
	if m["error"] == nil || !strings.Contains(raw, "--enable-ipv6") {
		t.Errorf("an IPv6 guest address without -6 replied %s; want an error naming --enable-ipv6", raw)
	}
	// An IPv6 host address reaches the IPv4 guest when there is no IPv6.
	port = e.slirpFreePort(t, "[::1]")
	slirpAddHostfwd(t, sock, "::1", port, 8080)
	got, err := e.slirpWhoami(fmt.Sprintf("[::1]:%d", port), "")
	if err != nil || !strings.HasPrefix(got, "10.0.2.2:") {
		t.Errorf("[::1] -> IPv4 guest: %q, %v", got, err)
	}
	slirpFinish(t, p, in)
}

func TestIPv6SLAAC(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		echo := e.w.TCPEcho(t, "[2001:db8::1]:0")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		ctr, pid, rd, ctrErr := e.nsContainer(t, ctx, "newns6", echo.String())
		// Nothing is configured: the container autoconfigures.
		rn := e.command(ctx, "--netns", fmt.Sprintf("/proc/%d/ns/net", pid), "--configure=false", "-6", "--resolv-conf", e.w.ResolvConf())
		var rnOut, rnErr bytes.Buffer
		rn.Stdout, rn.Stderr = &rnOut, &rnErr
		if err := e.w.Start(rn); err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(rd)
		ctrWait := ctr.Wait()
		rn.Process.Signal(syscall.SIGTERM)
		rnWait := rn.Wait()
		if ctrWait != nil || !strings.Contains(string(rest), "OK") {
			t.Fatalf("container: %v %q\n%s\nrootlessnet (%v):\n%s", ctrWait, rest, ctrErr.String(), rnWait, rnErr.String())
		}
		t.Logf("container: %s", bytes.TrimSpace(rest))
	})
}

func TestIPv6Rootlesskit(t *testing.T) {
	if _, err := exec.LookPath("rootlesskit"); err != nil {
		t.Skip("rootlesskit is not installed")
	}
	// rootlesskit --ipv6 passes -6 and configures only IPv4 itself: the
	// container autoconfigures from rootlessnet's router advertisements.
	e := newEnv(t, world.Nobody)
	echo := e.w.TCPEcho(t, "[2001:db8::1]:0")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := e.slirpStart(t, e.slirpRootlesskit(ctx, "rk6", []string{"--ipv6"}, "slaac-only", echo.String()))
	status, ok := p.wait(60 * time.Second)
	if !ok {
		t.Fatalf("rootlesskit did not exit\n%s", p.output())
	}
	if status != 0 || !strings.Contains(p.stdout.String(), "OK") {
		t.Fatalf("rootlesskit --ipv6 exited %d\n%s", status, p.output())
	}
	t.Logf("%s", strings.TrimSpace(p.stdout.String()))
}

// ---------------------------------------------------------------------
// Container side.

func v6Suite(args []string) error {
	echo, udpAddr, loTCP, loUDP := args[0], args[1], args[2], args[3]
	tcpOnly := len(args) > 4 && args[4] == "tcp"
	// The address is usable at once (optimistic DAD): the command may
	// connect before duplicate address detection ends.
	if err := tcpHalfClose(echo); err != nil {
		return fmt.Errorf("tcp at start: %w", err)
	}
	// Duplicate address detection ran and succeeded on every address,
	// the link-local one included.
	if err := waitAddrsSettled("tap0", 5*time.Second); err != nil {
		return err
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"tcp to the world", func() error { return tcpHalfClose(echo) }},
		{"udp to the world", func() error { return udpEcho(udpAddr) }},
		{"tcp refused", func() error { return tcpRefused(fmt.Sprintf("[%s]:9", world.UplinkV6)) }},
		{"udp refused", func() error { return udpRefused(fmt.Sprintf("[%s]:9", world.UplinkV6)) }},
		{"tcp to the host's ::1", func() error { return tcpHalfClose(fmt.Sprintf("[%s]:%s", gateway6, loTCP)) }},
		{"udp to the host's ::1", func() error { return udpEcho(fmt.Sprintf("[%s]:%s", gateway6, loUDP)) }},
		{"tcp dns port 80 refused", func() error { return tcpRefused(fmt.Sprintf("[%s]:80", dns6)) }},
		{"tcp dns", func() error { return dnsQuery(fmt.Sprintf("[%s]:53", dns6), world.DNSName, dns.TypeAAAA) }},
		{"ping the gateway", func() error { return ping(gateway6) }},
		{"ping the dns address", func() error { return ping(dns6) }},
		{"ping the world", func() error { return ping(world.UplinkV6) }},
		{"ping the gateway's link-local address", func() error { return ping(gatewayLinkLocal + "%tap0") }},
		{"no forged reply from another link-local address", func() error {
			if ping("fe80::1%tap0") == nil {
				return errors.New("fe80::1 answered: the reply was forged")
			}
			return nil
		}},
		{"no forged reply from a dead address", func() error {
			if ping("2001:db8::99") == nil {
				return errors.New("2001:db8::99 answered: the reply was forged")
			}
			return nil
		}},
	}
	for _, s := range steps {
		if tcpOnly && !strings.HasPrefix(s.name, "tcp ") {
			continue
		}
		if err := s.fn(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	conf, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return err
	}
	if strings.Contains(string(conf), "nameserver "+dns6) {
		fmt.Println("resolv.conf has " + dns6)
	}
	return nil
}

// waitAddrsSettled fails if an IPv6 address of link failed duplicate
// address detection, or is still tentative after timeout.
func waitAddrsSettled(link string, timeout time.Duration) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		tentative := ""
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("%s: duplicate address detection failed", a.IPNet)
			}
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = a.IPNet.String()
			}
		}
		if tentative == "" && len(addrs) >= 2 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("addresses not settled after %v: %v (tentative %q)", timeout, addrs, tentative)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func slaacClient(args []string) error {
	fmt.Printf("PID %d\n", os.Getpid())
	return slaacRoundTrip(args[0], 30*time.Second)
}

// slaacRoundTrip brings lo and tap0 up, waits for an autoconfigured
// address in fd00::/64 and a default route, then echoes through echo.
func slaacRoundTrip(echo string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var tap netlink.Link
	for {
		var err error
		if tap, err = netlink.LinkByName("tap0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("tap0 never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// What a container's own tooling would do: bring the links up and
	// let the kernel autoconfigure.
	lo, _ := netlink.LinkByName("lo")
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return err
	}
	prefix := netip.MustParsePrefix("fd00::/64")
	var got netip.Addr
	for got = (netip.Addr{}); !got.IsValid(); {
		addrs, _ := netlink.AddrList(tap, netlink.FAMILY_V6)
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("%s: duplicate address detection failed", a.IPNet)
			}
			ip, _ := netip.AddrFromSlice(a.IP)
			if prefix.Contains(ip) && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				got = ip
			}
		}
		if time.Now().After(deadline) {
			snmp, _ := os.ReadFile("/proc/net/snmp6")
			return fmt.Errorf("no SLAAC address in %s: %v\n%s", prefix, addrs, snmp)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var gw net.IP
	for gw == nil {
		routes, _ := netlink.RouteList(tap, netlink.FAMILY_V6)
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "::/0" {
				gw = r.Gw
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no default route from router advertisements: %v", routes)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := waitAddrsSettled("tap0", 5*time.Second); err != nil {
		return err
	}
	fmt.Printf("address %s via %s\n", got, gw)
	return tcpHalfClose(echo)
}
