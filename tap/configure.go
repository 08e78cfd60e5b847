package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config is how the TAP is set up inside the namespace.
type Config struct {
	Name string
	MTU  int
	// MAC, when set, replaces the kernel's random address.
	MAC net.HardwareAddr
	// Address is the guest's address with the network's prefix length.
	Address netip.Prefix
	// Gateway is the default route's next hop.
	Gateway netip.Addr
	// Address6 and Gateway6 are the same for IPv6; invalid when off.
	Address6 netip.Prefix
	Gateway6 netip.Addr
}

// dadTimeout bounds the wait for duplicate address detection: Linux
// takes up to a second of random delay plus one retransmit timer (1 s).
const dadTimeout = 5 * time.Second

// Configure brings lo and the TAP up, sets the MTU, MAC and address, and
// routes everything through the gateway. It runs inside the namespace.
func Configure(cfg Config) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	link, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", cfg.Name, err)
	}
	if cfg.MTU > 0 {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", cfg.MTU, cfg.Name, err)
		}
	}
	if len(cfg.MAC) > 0 {
		if err := netlink.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return fmt.Errorf("setting MAC %s on %s: %w", cfg.MAC, cfg.Name, err)
		}
	}
	optimistic := false
	if cfg.Address6.IsValid() {
		optimistic = enableOptimisticDAD(cfg.Name)
	}
	for _, a := range []netip.Prefix{cfg.Address, cfg.Address6} {
		if !a.IsValid() {
			continue
		}
		addr := &netlink.Addr{IPNet: prefixToIPNet(a)}
		if a.Addr().Is6() && optimistic {
			addr.Flags = unix.IFA_F_OPTIMISTIC
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("adding %s to %s: %w", a, cfg.Name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", cfg.Name, err)
	}
	for _, gw := range []netip.Addr{cfg.Gateway, cfg.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if gw.Is6() {
			route.Family = netlink.FAMILY_V6
		}
		if err := netlink.RouteReplace(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding the default route via %s: %w", gw, err)
		}
	}
	if cfg.Address6.IsValid() {
		// The address runs duplicate address detection like any other.
		// A tentative address is unusable, so a command started before
		// DAD ends (up to 2 s) could not connect over IPv6; an optimistic
		// one (RFC 4429) is usable at once while DAD goes on.
		return waitDAD(link, cfg.Address6.Addr())
	}
	return nil
}

// enableOptimisticDAD lets the interface's IPv6 addresses be used while
// duplicate address detection runs; false if the kernel refused.
// /proc/sys/net shows the network namespace of the calling thread, which
// here is the container's.
func enableOptimisticDAD(name string) bool {
	for _, knob := range []string{"optimistic_dad", "use_optimistic"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/"+knob, []byte("1"), 0); err != nil {
			return false
		}
	}
	return true
}

// waitDAD waits until addr on link is no longer tentative.
func waitDAD(link netlink.Link, addr netip.Addr) error {
	deadline := time.Now().Add(dadTimeout)
	for {
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
		}
		state := "missing"
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip == addr {
				switch {
				case a.Flags&unix.IFA_F_DADFAILED != 0:
					return fmt.Errorf("%s on %s: duplicate address detection failed: another host on the link claims it", addr, link.Attrs().Name)
				case a.Flags&unix.IFA_F_OPTIMISTIC != 0:
					return nil
				case a.Flags&unix.IFA_F_TENTATIVE != 0:
					state = "tentative"
				default:
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s on %s: still %s after %v", addr, link.Attrs().Name, state, dadTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}
