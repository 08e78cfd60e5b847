package stack

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

	vnetFlagNeedsCsum = 1
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4

	// gsoMaxSize is the largest super-frame handed to the kernel: an IP
	// packet's 64 KiB less room for the headers.
	gsoMaxSize = 65535 - header.EthernetMinimumSize
)

// vnetHdr is the decoded header.
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func (h *vnetHdr) encode(b []byte) {
	b[0] = h.flags
	b[1] = h.gsoType
	binary.LittleEndian.PutUint16(b[2:], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:], h.csumOffset)
}

// vnetHdrFor describes an outbound packet: a GSO segment is marked for
// the kernel to split (at MSS) and checksum; anything else is complete.
func vnetHdrFor(pkt *stack.PacketBuffer) vnetHdr {
	var h vnetHdr
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		return h
	}
	h.hdrLen = uint16(pkt.HeaderSize())
	if gso.NeedsCsum {
		h.flags = vnetFlagNeedsCsum
		h.csumStart = header.EthernetMinimumSize + gso.L3HdrLen
		h.csumOffset = gso.CsumOffset
	}
	if uint16(pkt.Data().Size()) > gso.MSS {
		switch gso.Type {
		case stack.GSOTCPv4:
			h.gsoType = vnetGSOTCPv4
		case stack.GSOTCPv6:
			h.gsoType = vnetGSOTCPv6
		}
		if h.gsoType != vnetGSONone {
			h.gsoSize = gso.MSS
		}
	}
	return h
}
