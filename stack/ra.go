package stack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Router advertisement lifetimes, in seconds.
const (
	raRouterLifetime   = 1800
	raValidLifetime    = 86400
	raPreferredLifetim = 14400
	raRDNSSLifetime    = 1800
)

// RouterAdvert builds the Ethernet frame of an unsolicited router
// advertisement to all nodes: this router's MAC, the MTU, the prefix
// (on-link, autonomous: SLAAC) and the DNS server (RDNSS, RFC 8106).
// gVisor has no router side, so the frame is made here.
func RouterAdvert(mac tcpip.LinkAddress, prefix netip.Prefix, mtu uint32, dns netip.Addr) []byte {
	var body []byte
	// RA header after type/code/checksum: hop limit, flags, router
	// lifetime, reachable time, retrans timer.
	body = append(body, 64, 0)
	body = binary.BigEndian.AppendUint16(body, raRouterLifetime)
	body = binary.BigEndian.AppendUint32(body, 0)
	body = binary.BigEndian.AppendUint32(body, 0)
	// Source link-layer address option.
	body = append(body, 1, 1)
	body = append(body, []byte(mac)...)
	// MTU option.
	body = append(body, 5, 1, 0, 0)
	body = binary.BigEndian.AppendUint32(body, mtu)
	// Prefix information: on-link (L) and autonomous (A).
	body = append(body, 3, 4, byte(prefix.Bits()), 0xc0)
	body = binary.BigEndian.AppendUint32(body, raValidLifetime)
	body = binary.BigEndian.AppendUint32(body, raPreferredLifetim)
	body = binary.BigEndian.AppendUint32(body, 0)
	p := prefix.Masked().Addr().As16()
	body = append(body, p[:]...)
	if dns.IsValid() {
		body = append(body, 25, 3, 0, 0)
		body = binary.BigEndian.AppendUint32(body, raRDNSSLifetime)
		d := dns.As16()
		body = append(body, d[:]...)
	}

	src := LinkLocal(mac)
	dst := netip.MustParseAddr("ff02::1")
	icmpLen := header.ICMPv6HeaderSize + len(body)
	frame := make([]byte, header.EthernetMinimumSize+header.IPv6MinimumSize+icmpLen)
	header.Ethernet(frame).Encode(&header.EthernetFields{
		SrcAddr: mac,
		DstAddr: header.EthernetAddressFromMulticastIPv6Address(tcpip.AddrFrom16(dst.As16())),
		Type:    header.IPv6ProtocolNumber,
	})
	ip := header.IPv6(frame[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(icmpLen),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          255, // NDP requires it (RFC 4861 6.1.2)
		SrcAddr:           tcpip.AddrFrom16(src.As16()),
		DstAddr:           tcpip.AddrFrom16(dst.As16()),
	})
	icmp := header.ICMPv6(frame[header.EthernetMinimumSize+header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6RouterAdvert)
	copy(icmp[header.ICMPv6HeaderSize:], body)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp,
		Src:    tcpip.AddrFrom16(src.As16()),
		Dst:    tcpip.AddrFrom16(dst.As16()),
	}))
	return frame
}
