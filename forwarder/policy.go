package forwarder

import (
	"net/netip"
)

// Verdict says what happens to a flow from the container.
type Verdict int

const (
	// Refuse answers with RST (TCP) or ICMP port unreachable (UDP).
	Refuse Verdict = iota
	// Dial connects a host socket to the translated address.
	Dial
	// DNS hands the flow to the DNS forwarder.
	DNS
)

// Policy maps a destination the container asked for to what the host
// side does. It is pure, so that the access rules can be tested alone.
type Policy struct {
	Gateway, DNS netip.Addr
	// Gateway6 and DNS6 are the IPv6 counterparts, LinkLocal6 the
	// stack's fe80:: address (all zero without IPv6).
	Gateway6, DNS6, LinkLocal6 netip.Addr
	Network                    netip.Prefix
	DisableHostLoopback        bool
	DisableDNS                 bool
}

// Translate decides the fate of a flow to dst.
func (p Policy) Translate(dst netip.AddrPort) (Verdict, netip.AddrPort) {
	a := dst.Addr().Unmap()
	switch {
	case a == p.Gateway || (p.Gateway6.IsValid() && a == p.Gateway6):
		if p.DisableHostLoopback {
			return Refuse, netip.AddrPort{}
		}
		lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if a.Is6() {
			lo = netip.IPv6Loopback()
		}
		return Dial, netip.AddrPortFrom(lo, dst.Port())
	case a == p.DNS || (p.DNS6.IsValid() && a == p.DNS6):
		// Only port 53, and only to the upstreams: never a way to the
		// host's loopback.
		if dst.Port() == 53 && !p.DisableDNS {
			return DNS, dst
		}
		return Refuse, netip.AddrPort{}
	case a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.Is6() && a.IsLinkLocalUnicast():
		return Refuse, netip.AddrPort{}
	case a.Is4() && a == broadcast(p.Network):
		return Refuse, netip.AddrPort{}
	case a.Is4() && a.As4() == [4]byte{255, 255, 255, 255}:
		return Refuse, netip.AddrPort{}
	case dst.Port() == 0:
		return Refuse, netip.AddrPort{}
	}
	return Dial, netip.AddrPortFrom(a, dst.Port())
}

func broadcast(p netip.Prefix) netip.Addr {
	if !p.IsValid() || !p.Addr().Is4() {
		return netip.Addr{}
	}
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
