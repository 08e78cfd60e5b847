// Package hub builds a rootless network's namespace: a kernel bridge that
// joins the members' veth pairs, so that members talk to each other at
// the kernel's speed, and the uplink TAP on that bridge, through which the
// userspace stack is every member's gateway for what leaves the network.
// Its functions run inside that namespace, as root of its user namespace
// (the hub child, launcher/hub.go).
package hub

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/tap"
)

// Names of the hub's links.
const (
	Bridge = "rn0"
	Uplink = "uplink"
	// MemberLink is the member's end of its veth pair.
	MemberLink = "eth0"
)

// Setup brings lo up, creates the bridge and the uplink TAP on it, and
// returns the TAP's fd (opened with virtio-net headers when vnetHdr).
func Setup(mtu int, vnetHdr bool) (*os.File, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("bringing lo up: %w", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge, MTU: mtu}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("creating the bridge %s: %w", Bridge, err)
	}
	f, err := tap.Open(tap.Options{Name: Uplink, VnetHdr: vnetHdr})
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	up, err := netlink.LinkByName(Uplink)
	if err != nil {
		return fail("finding the uplink", err)
	}
	if err := netlink.LinkSetMTU(up, mtu); err != nil {
		return fail("setting the uplink's MTU", err)
	}
	if err := netlink.LinkSetMaster(up, br); err != nil {
		return fail("putting the uplink on the bridge", err)
	}
	if err := netlink.LinkSetUp(up); err != nil {
		return fail("bringing the uplink up", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fail("bringing the bridge up", err)
	}
	return f, nil
}

// PortName is the hub's end of member id's veth pair.
func PortName(id int) string { return fmt.Sprintf("rnv%d", id) }

// Attach creates member id's veth pair: PortName(id) on the bridge, and
// MemberLink in the member's network namespace (memberNS), both with mtu.
// The member configures its end.
func Attach(id int, memberNS *os.File, mtu int) error {
	br, err := netlink.LinkByName(Bridge)
	if err != nil {
		return fmt.Errorf("finding the bridge: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: PortName(id), MTU: mtu, MasterIndex: br.Attrs().Index},
		PeerName:      MemberLink,
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(int(memberNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating the member's veth pair: %w", err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		Detach(id)
		return fmt.Errorf("bringing the member's port up: %w", err)
	}
	// In order towards the bridge (EnableGRO says why); an optimisation,
	// so a kernel that refuses it still gets its member.
	EnableGRO(PortName(id))
	return nil
}

// Detach removes member id's veth pair; one already gone (its namespace
// ended, which destroys the pair) is not an error.
func Detach(id int) error {
	name := PortName(id)
	l, err := netlink.LinkByName(name)
	if err != nil {
		name = TapName(id)
		l, err = netlink.LinkByName(name)
	}
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return err
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}

// TapName is the bridge port of member id when the member is a namespace
// of another user namespace (attached with --netns), which no veth can
// reach: the network's process relays frames between this TAP and the
// member's own.
func TapName(id int) string { return fmt.Sprintf("rnt%d", id) }

// AttachTap creates member id's TAP on the bridge and returns its fd.
func AttachTap(id int, mtu int) (*os.File, error) {
	br, err := netlink.LinkByName(Bridge)
	if err != nil {
		return nil, fmt.Errorf("finding the bridge: %w", err)
	}
	f, err := tap.Open(tap.Options{Name: TapName(id)})
	if err != nil {
		return nil, err
	}
	l, err := netlink.LinkByName(TapName(id))
	if err == nil {
		err = netlink.LinkSetMTU(l, mtu)
	}
	if err == nil {
		err = netlink.LinkSetMaster(l, br)
	}
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("putting the member's TAP on the bridge: %w", err)
	}
	return f, nil
}
