package link

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// With USO (TUN_F_USO4/6) the container's kernel hands over a socket's
// UDP_SEGMENT run as one super-frame: one IP packet whose UDP payload is
// datagrams of the virtio-net header's GSOSize bytes each, the last
// possibly shorter, with a partial checksum. The fast path sends such a
// run on as one (UDP_SEGMENT again); the stack would take it for a single
// datagram, so it gets the datagrams one by one (SplitUDP).

// SplitUDP calls each with every datagram of the UDP super-frame frame
// (Ethernet, IPv4 or IPv6 without options or extension headers, UDP,
// then the payload) of segments of seg bytes, as a complete frame with
// its own lengths, IPv4 identification and checksums. each's frame is
// scratch, valid only during the call. It reports false, calling each
// never, for a frame that is not such a super-frame.
func SplitUDP(frame []byte, seg int, scratch []byte, each func(frame []byte)) bool {
	const eth = header.EthernetMinimumSize
	if seg <= 0 || len(frame) < eth {
		return false
	}
	var ipLen int
	var src, dst tcpip.Address
	var id uint16
	v4 := false
	switch header.Ethernet(frame).Type() {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(frame[eth:])
		if len(ip) < header.IPv4MinimumSize+header.UDPMinimumSize || ip[0] != 0x45 ||
			ip.Protocol() != uint8(header.UDPProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 ||
			int(ip.TotalLength()) > len(ip) || int(ip.TotalLength()) < header.IPv4MinimumSize+header.UDPMinimumSize {
			return false
		}
		frame = frame[:eth+int(ip.TotalLength())]
		ipLen, v4, id = header.IPv4MinimumSize, true, ip.ID()
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(frame[eth:])
		if len(ip) < header.IPv6MinimumSize+header.UDPMinimumSize || ip[0]>>4 != 6 ||
			ip.NextHeader() != uint8(header.UDPProtocolNumber) ||
			header.IPv6MinimumSize+int(ip.PayloadLength()) > len(ip) {
			return false
		}
		frame = frame[:eth+header.IPv6MinimumSize+int(ip.PayloadLength())]
		ipLen = header.IPv6MinimumSize
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	default:
		return false
	}
	hdrLen := eth + ipLen + header.UDPMinimumSize
	payload := frame[hdrLen:]
	if len(payload) <= seg || len(scratch) < hdrLen+seg {
		return false
	}
	for i, off := 0, 0; off < len(payload); i, off = i+1, off+seg {
		part := payload[off:min(off+seg, len(payload))]
		out := scratch[:hdrLen+len(part)]
		copy(out, frame[:hdrLen])
		copy(out[hdrLen:], part)
		udpLen := header.UDPMinimumSize + len(part)
		if v4 {
			ip := header.IPv4(out[eth:])
			ip.SetTotalLength(uint16(ipLen + udpLen))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			binary.BigEndian.PutUint16(out[eth+4:], uint16(udpLen))
		}
		uh := header.UDP(out[eth+ipLen:])
		uh.SetLength(uint16(udpLen))
		uh.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(udpLen))
		c := ^uh.CalculateChecksum(checksum.Checksum(part, xsum))
		if c == 0 {
			c = 0xffff
		}
		uh.SetChecksum(c)
		each(out)
	}
	return true
}
