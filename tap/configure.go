package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

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
}

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
	if cfg.Address.IsValid() {
		addr := &netlink.Addr{IPNet: prefixToIPNet(cfg.Address)}
		if cfg.Address.Addr().Is6() {
			// DAD would delay the address; the stack is the only
			// other host on this link.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("adding %s to %s: %w", cfg.Address, cfg.Name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", cfg.Name, err)
	}
	if cfg.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.Gateway.AsSlice()}
		if cfg.Gateway.Is6() {
			route.Family = netlink.FAMILY_V6
		}
		if err := netlink.RouteReplace(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding the default route via %s: %w", cfg.Gateway, err)
		}
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}
