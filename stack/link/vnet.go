package link

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The virtio-net header (linux/virtio_net.h) that a TAP opened with
// IFF_VNET_HDR puts before every frame. It lets the kernel hand over and
// take 64 KiB TCP super-frames (TSO) with checksums left to the receiver,
// instead of one MTU-sized frame and one checksum per syscall.
const (
	VnetHdrSize = 10

	// VnetNeedsCsum is the flag that leaves the checksum to the
	// kernel; VnetGSOTCPv4 and VnetGSOTCPv6 are the GSO types.
	VnetNeedsCsum = 1
	vnetGSONone   = 0
	VnetGSOTCPv4  = 1
	VnetGSOTCPv6  = 4

	// gsoMaxSize is the largest super-frame handed to the kernel: an IP
	// packet's 64 KiB less room for the headers.
	gsoMaxSize = 65535 - header.EthernetMinimumSize
)

// VnetHeader is the decoded header (struct virtio_net_hdr).
type VnetHeader struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// Encode writes h into b, at least VnetHdrSize bytes.
func (h *VnetHeader) Encode(b []byte) {
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
}

// vnetHdrFor describes an outbound packet: a GSO segment is marked for
// the kernel to split (at MSS) and checksum; anything else is complete.
func vnetHdrFor(pkt *stack.PacketBuffer) VnetHeader {
	var h VnetHeader
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		return h
	}
	h.HdrLen = uint16(pkt.HeaderSize())
	if gso.NeedsCsum {
		h.Flags = VnetNeedsCsum
		h.CsumStart = header.EthernetMinimumSize + gso.L3HdrLen
		h.CsumOffset = gso.CsumOffset
	}
	if uint16(pkt.Data().Size()) > gso.MSS {
		switch gso.Type {
		case stack.GSOTCPv4:
			h.GSOType = VnetGSOTCPv4
		case stack.GSOTCPv6:
			h.GSOType = VnetGSOTCPv6
		}
		if h.GSOType != vnetGSONone {
			h.GSOSize = gso.MSS
		}
	}
	return h
}
