package stack

import (
	"fmt"
	"net/netip"
)

// Addressing is the container's IPv4 network as slirp4netns lays it out:
// gateway network+2, DNS network+3, guest network+100.
type Addressing struct {
	Network netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr
	Guest   netip.Addr
}

// DefaultCIDR is slirp4netns' default network.
const DefaultCIDR = "10.0.2.0/24"

// ParseCIDR validates an IPv4 network for the container: a network
// address (host bits zero) with a prefix of 1 to 25 bits, so that the
// guest address network+100 fits.
func ParseCIDR(s string) (Addressing, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return Addressing{}, fmt.Errorf("invalid --cidr %q: want an IPv4 network such as 10.0.2.0/24", s)
	}
	if !p.Addr().Is4() {
		return Addressing{}, fmt.Errorf("invalid --cidr %q: must be an IPv4 network", s)
	}
	if p.Bits() < 1 || p.Bits() > 25 {
		return Addressing{}, fmt.Errorf("invalid --cidr %q: prefix length must be 1 to 25 (the guest is network+100)", s)
	}
	if p.Masked() != p {
		return Addressing{}, fmt.Errorf("invalid --cidr %q: host bits are set; did you mean %s?", s, p.Masked())
	}
	return Addressing{
		Network: p,
		Gateway: addOffset(p.Addr(), 2),
		DNS:     addOffset(p.Addr(), 3),
		Guest:   addOffset(p.Addr(), 100),
	}, nil
}

// GuestPrefix is the guest's address with the network's prefix length.
func (a Addressing) GuestPrefix() netip.Prefix {
	return netip.PrefixFrom(a.Guest, a.Network.Bits())
}

func addOffset(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// MinMTU and MaxMTU bound --mtu: the smallest MTU Linux allows IPv4 on, and the
// largest MTU slirp4netns accepts.
const (
	MinMTU     = 68
	MaxMTU     = 65521
	DefaultMTU = 65520
)

// ValidateMTU checks an MTU given on the command line.
func ValidateMTU(mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU {
		return fmt.Errorf("invalid --mtu %d: must be %d to %d", mtu, MinMTU, MaxMTU)
	}
	return nil
}
