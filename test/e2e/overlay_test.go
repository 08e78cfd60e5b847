package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/hub"
	"github.com/rootlessnet/rootlessnet/test/world"
)

// Two hosts of an overlay: two worlds joined by a veth pair, with
// TEST-NET-1 addresses, each running a network's process as its user.
const (
	hostAAddr = "192.0.2.1"
	hostBAddr = "192.0.2.2"
	ovSubnet  = "10.200.0.0/24"
	ovSubnet6 = "fd89:200::/64"
)

// addr6 is a member's IPv6 address from inspect.
func addr6(t *testing.T, st overlayStatus, member string) string {
	t.Helper()
	for _, m := range st.Members {
		if m.Name == member && m.Address6 != "" {
			return m.Address6
		}
	}
	t.Fatalf("member %s has no IPv6 address: %+v", member, st.Members)
	return ""
}

// joinHosts links world a to world b: hostlink in each, 192.0.2.1/24 in a
// and 192.0.2.2/24 in b.
func joinHosts(t *testing.T, a, b *world.World) {
	t.Helper()
	bns, err := os.Open(b.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	defer bns.Close()
	err = a.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hostlink"}, PeerName: "hostlink-b", PeerNamespace: netlink.NsFd(int(bns.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		return upWithAddr("hostlink", hostAAddr+"/24")
	})
	if err == nil {
		err = b.Do(func() error {
			l, err := netlink.LinkByName("hostlink-b")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetName(l, "hostlink"); err != nil {
				return err
			}
			return upWithAddr("hostlink", hostBAddr+"/24")
		})
	}
	if err != nil {
		t.Fatalf("joining the hosts: %v", err)
	}
}

func upWithAddr(name, cidr string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

type overlayStatus struct {
	netStatus
	MTU     int `json:"mtu"`
	Overlay struct {
		Peers []string `json:"peers"`
		Stats struct {
			Sent, Received, DropShort, DropFlags, DropVNI, DropStranger uint64
		} `json:"stats"`
	} `json:"overlay"`
}

func (ne *netEnv) overlay(name string) overlayStatus {
	ne.t.Helper()
	var st overlayStatus
	out := ne.mustRN("network", "inspect", name)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		ne.t.Fatalf("inspect: %v\n%s", err, out)
	}
	return st
}

// TestOverlay: a rootless network spanning two hosts over VXLAN. Members
// on each host reach those on the other by address both ways (TCP with 64
// MiB checksummed, UDP, ping), as themselves; the tunnel drops and counts
// malformed, foreign-VNI and strangers' datagrams; a removed peer is cut
// off and an added one is back.
func TestOverlay(t *testing.T) {
	ea, eb := newEnv(t, world.Nobody), newEnv(t, world.Nobody)
	joinHosts(t, ea.w, eb.w)
	a, b := newNetEnv(t, ea), newNetEnv(t, eb)
	a.mustRN("network", "create", "ov", "--subnet", ovSubnet, "--ip-range", "10.200.0.0/25", "--subnet6", ovSubnet6,
		"--vxlan", hostAAddr+":4789", "--vni", "42", "--vxlan-peer", hostBAddr+":4789", "--resolv-conf", ea.w.ResolvConf())
	b.mustRN("network", "create", "ov", "--subnet", ovSubnet, "--ip-range", "10.200.0.128/25", "--subnet6", ovSubnet6,
		"--vxlan", "4789", "--vni", "42", "--vxlan-peer", hostAAddr+":4789", "--resolv-conf", eb.w.ResolvConf())
	sa := a.startServer(t, "--network", "ov", "--name", "a1")
	sb := b.startServer(t, "--network", "ov", "--name", "b1")
	stA, stB := a.overlay("ov"), b.overlay("ov")
	ipA, ipB := stA.addr(t, "a1"), stB.addr(t, "b1")
	if stA.MTU != 1450 || !strings.HasPrefix(ipB, "10.200.0.1") || ipA == ipB {
		t.Fatalf("overlay: MTU %d, members %s and %s", stA.MTU, ipA, ipB)
	}
	sa.connect(t, ipB, ipB)
	sb.connect(t, ipA, ipA)
	// IPv6 across, both ways.
	ip6A, ip6B := addr6(t, stA, "a1"), addr6(t, stB, "b1")
	sa.connect(t, ip6B, ip6B)
	sb.connect(t, ip6A, ip6A)
	// Names across hosts, once the hosts' gossip has met.
	sa.connectEventually(t, "b1", ipB, 30*time.Second)
	sb.connectEventually(t, "a1.ov", ipA, 30*time.Second)
	// 1 GiB across, checked end to end.
	start := time.Now()
	if r := b.member([]string{"--network", "ov"}, "net-bulk", ipA, fmt.Sprint(1<<30)); r.status != 0 || !strings.Contains(r.stdout, "OK") {
		t.Errorf("1 GiB across the overlay: %d\n%s%s", r.status, r.stdout, r.stderr)
	}
	t.Logf("1 GiB echoed across the overlay in %v", time.Since(start))
	// A peer address where no host answers: flooded to as well, and the
	// real peer is still reached.
	a.mustRN("network", "peer", "add", "ov", "192.0.2.99:4789")
	sa.connect(t, ipB, ipB)
	a.mustRN("network", "peer", "rm", "ov", "192.0.2.99:4789")

	// Bad datagrams at A's VTEP, from B's address: counted, dropped.
	before := a.overlay("ov").Overlay.Stats
	err := eb.w.Do(func() error {
		c, err := net.Dial("udp4", hostAAddr+":4789")
		if err != nil {
			return err
		}
		defer c.Close()
		frame := make([]byte, 64)
		c.Write(append([]byte{0x08, 0, 0, 0, 0, 0, 43, 0}, frame...)) // VNI 43
		c.Write([]byte{0x08, 0, 0})                                   // short
		c.Write(append([]byte{0, 0, 0, 0, 0, 0, 42, 0}, frame...))    // no I flag
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// And one from a stranger: A's own world, not a peer.
	ea.w.Do(func() error {
		c, err := net.Dial("udp4", hostAAddr+":4789")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(append([]byte{0x08, 0, 0, 0, 0, 0, 42, 0}, make([]byte, 64)...))
		return err
	})
	if err := retryFor(10*time.Second, func() error {
		s := a.overlay("ov").Overlay.Stats
		if s.DropVNI <= before.DropVNI || s.DropShort <= before.DropShort || s.DropFlags <= before.DropFlags || s.DropStranger <= before.DropStranger {
			return fmt.Errorf("stats %+v (before %+v)", s, before)
		}
		return nil
	}); err != nil {
		t.Errorf("bad datagrams: %v", err)
	}
	sa.connect(t, ipB, ipB) // still fine

	// A removes B: cut off. Adding it back restores the path.
	a.mustRN("network", "peer", "rm", "ov", hostBAddr+":4789")
	if r := a.member([]string{"--network", "ov"}, "net-client", ipB, ipB); r.status == 0 {
		t.Errorf("reached %s with the peer removed", ipB)
	}
	if r := a.rn("network", "peer", "rm", "ov", hostBAddr+":4789"); r.status == 0 || !strings.Contains(r.stderr, "not a peer") {
		t.Errorf("removing a peer twice: %d %s", r.status, r.stderr)
	}
	a.mustRN("network", "peer", "add", "ov", hostBAddr+":4789")
	if err := retryFor(20*time.Second, func() error {
		if r := a.member([]string{"--network", "ov"}, "net-client", ipB, ipB); r.status != 0 {
			return fmt.Errorf("%s%s", r.stdout, r.stderr)
		}
		return nil
	}); err != nil {
		t.Errorf("after the peer came back: %v", err)
	}
	if st := a.overlay("ov"); len(st.Overlay.Peers) != 1 || st.Overlay.Peers[0] != hostBAddr+":4789" {
		t.Errorf("A's peers: %v", st.Overlay.Peers)
	}
	// Host B's network dies and comes back with a new member: A reaches
	// it by address and by name; the dead host's names are gone.
	pidB := b.overlay("ov").Pid
	syscall.Kill(pidB, syscall.SIGKILL)
	waitGone(t, pidB)
	b.mustRN("network", "rm", "ov")
	b.mustRN("network", "create", "ov", "--subnet", ovSubnet, "--ip-range", "10.200.0.128/25",
		"--vxlan", "4789", "--vni", "42", "--vxlan-peer", hostAAddr+":4789", "--resolv-conf", eb.w.ResolvConf())
	// A new address: host A's members keep b1's MAC for its old one
	// until their neighbour entries expire (tens of seconds), as with
	// any network whose host restarts.
	sb2 := b.startServer(t, "--network", "ov", "--name", "b2", "--ip", "10.200.0.150")
	ipB2 := b.overlay("ov").addr(t, "b2")
	sa.connectEventually(t, "b2", ipB2, 30*time.Second)
	sb2.connectEventually(t, "a1", ipA, 30*time.Second)
	if err := retryFor(30*time.Second, func() error {
		// In the network's domain the answer is NXDOMAIN; a bare
		// name goes to the upstreams (none answers here).
		if r := a.member([]string{"--network", "ov"}, "net-lookup", "b1.ov"); !strings.Contains(r.stdout, "NXDOMAIN") {
			return fmt.Errorf("b1.ov still resolves: %s%s", r.stdout, r.stderr)
		}
		if r := a.member([]string{"--network", "ov"}, "net-lookup", "b1"); strings.Contains(r.stdout, "ADDRS") {
			return fmt.Errorf("b1 still resolves: %s", r.stdout)
		}
		return nil
	}); err != nil {
		t.Errorf("after host B died: %v", err)
	}

	// Bad peers and flags: one-line errors.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "peer", "add", "ov", "nowhere"}, "invalid peer"},
		{[]string{"network", "create", "x", "--vxlan", "0"}, "invalid --vxlan"},
		{[]string{"network", "create", "x", "--vni", "7"}, "need --vxlan"},
		{[]string{"network", "create", "x", "--vxlan", "4790", "--vni", "16777216"}, "invalid --vni"},
		{[]string{"network", "create", "x", "--vxlan", hostAAddr + ":4789"}, "address already in use"},
		{[]string{"network", "create", "x", "--subnet", "10.201.0.0/24", "--ip-range", "10.9.0.0/25"}, "invalid --ip-range"},
	} {
		r := a.rn(c.args...)
		if r.status == 0 || !strings.Contains(r.stderr, c.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: %d %q, want one line with %q", c.args, r.status, r.stderr, c.want)
		}
	}
}

// TestOverlayKernelInterop: host A runs rootlessnet; host B a plain kernel
// vxlan device (same VNI and port, remote host A) on a bridge that has an
// address on the subnet. The rootless member and host B exchange TCP, UDP
// and pings both ways, and the kernel device's counters show that B's side
// was standard VXLAN.
func TestOverlayKernelInterop(t *testing.T) {
	ea, eb := newEnv(t, world.Nobody), newEnv(t, nil)
	joinHosts(t, ea.w, eb.w)
	const kernelSide = "10.200.0.200"
	err := eb.w.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "kbr"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		under, err := netlink.LinkByName("hostlink")
		if err != nil {
			return err
		}
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: "kvx", MasterIndex: br.Attrs().Index},
			VxlanId:      42,
			VtepDevIndex: under.Attrs().Index,
			SrcAddr:      net.ParseIP(hostBAddr),
			Group:        net.ParseIP(hostAAddr), // a unicast remote
			Port:         4789,
			Learning:     true,
		}
		if err := netlink.LinkAdd(vx); err != nil {
			return fmt.Errorf("kernel vxlan: %w", err)
		}
		if err := netlink.LinkSetUp(vx); err != nil {
			return err
		}
		// A NIC completes the inner checksums that the kernel leaves
		// to it; a veth would hand them on partial to the other
		// namespace's UDP socket, which no real wire does.
		if err := hub.SetEthtoolValue("hostlink", unix.ETHTOOL_STXCSUM, 0); err != nil {
			return err
		}
		return upWithAddr("kbr", kernelSide+"/24")
	})
	if err != nil {
		t.Fatalf("host B's kernel vxlan: %v", err)
	}
	echo := eb.w.TCPEcho(t, kernelSide+":0")
	uecho := eb.w.UDPEcho(t, kernelSide+":0")

	a := newNetEnv(t, ea)
	a.mustRN("network", "create", "ov", "--subnet", ovSubnet, "--ip-range", "10.200.0.0/25",
		"--vxlan", hostAAddr+":4789", "--vni", "42", "--vxlan-peer", hostBAddr+":4789", "--resolv-conf", ea.w.ResolvConf())
	sa := a.startServer(t, "--network", "ov", "--name", "a1")
	ipA := a.overlay("ov").addr(t, "a1")

	// Rootless member -> kernel side.
	for _, c := range []struct {
		mode string
		args []string
	}{
		{"tcp-echo", []string{echo.String(), fmt.Sprint(4 << 20)}},
		{"udp-echo", []string{uecho.String()}},
		{"ping", []string{kernelSide}},
	} {
		if r := a.member([]string{"--network", "ov"}, c.mode, c.args...); r.status != 0 || !strings.Contains(r.stdout, "OK") {
			t.Errorf("member -> kernel side, %s: %d\n%s%s", c.mode, r.status, r.stdout, r.stderr)
		}
	}
	// Kernel side -> rootless member: it sees host B's own address.
	var got string
	err = eb.w.Do(func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ipA, fmt.Sprint(netPort)), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 128)
		n, err := c.Read(buf)
		got = string(buf[:n])
		return err
	})
	if err != nil || !strings.HasPrefix(got, "FROM "+kernelSide+":") {
		t.Errorf("kernel side -> member: %q %v", got, err)
	}
	err = eb.w.Do(func() error { return ping(ipA) })
	if err != nil {
		t.Errorf("kernel side pings the member: %v", err)
	}
	_ = sa
	// The kernel device carried it: standard VXLAN both ways.
	eb.w.Do(func() error {
		l, err := netlink.LinkByName("kvx")
		if err != nil {
			return err
		}
		s := l.Attrs().Statistics
		if s == nil || s.RxPackets == 0 || s.TxPackets == 0 {
			t.Errorf("kernel vxlan counters: %+v", s)
		}
		return nil
	})
	if st := a.overlay("ov").Overlay.Stats; st.Received == 0 || st.Sent == 0 {
		t.Errorf("rootlessnet's tunnel counters: %+v", st)
	}
}
