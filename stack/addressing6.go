package stack

import (
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Addressing6 is the container's IPv6 network: gateway ::2, DNS ::3,
// guest ::100, as slirp4netns lays out fd00::/64. Network is invalid when
// IPv6 is off.
type Addressing6 struct {
	Network netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr
	Guest   netip.Addr
}

// DefaultCIDR6 is slirp4netns' IPv6 prefix.
const DefaultCIDR6 = "fd00::/64"

// Enabled reports whether the container has IPv6.
func (a Addressing6) Enabled() bool { return a.Network.IsValid() }

// ParseCIDR6 validates the container's IPv6 network: a network address
// with a /64 prefix, so that the guest can also autoconfigure (SLAAC)
// from the router advertisements.
func ParseCIDR6(s string) (Addressing6, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return Addressing6{}, fmt.Errorf("invalid --cidr6 %q: want an IPv6 /64 network such as fd00::/64", s)
	}
	if p.Bits() != 64 {
		return Addressing6{}, fmt.Errorf("invalid --cidr6 %q: the prefix must be /64 (stateless autoconfiguration needs it)", s)
	}
	if p.Masked() != p {
		return Addressing6{}, fmt.Errorf("invalid --cidr6 %q: host bits are set; did you mean %s?", s, p.Masked())
	}
	if p.Addr().IsLinkLocalUnicast() || p.Addr().IsMulticast() || p.Addr().IsLoopback() {
		return Addressing6{}, fmt.Errorf("invalid --cidr6 %q: want a unicast network (a unique local fd00::/64 or a global one)", s)
	}
	base := p.Addr().As16()
	at := func(n byte) netip.Addr {
		b := base
		b[15] = n & 0xff
		b[14] = 0
		return netip.AddrFrom16(b)
	}
	g := at(0)
	guest := g.As16()
	guest[14], guest[15] = 0x01, 0x00
	return Addressing6{Network: p, Gateway: at(2), DNS: at(3), Guest: netip.AddrFrom16(guest)}, nil
}

// GuestPrefix is the guest's address with the network's prefix length.
func (a Addressing6) GuestPrefix() netip.Prefix { return netip.PrefixFrom(a.Guest, a.Network.Bits()) }

// LinkLocal is the stack's fe80:: address, derived from its MAC (EUI-64):
// the source of its router advertisements.
func LinkLocal(mac tcpip.LinkAddress) netip.Addr {
	m := []byte(mac)
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8], b[9], b[10] = m[0]^0x02, m[1], m[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = m[3], m[4], m[5]
	return netip.AddrFrom16(b)
}
