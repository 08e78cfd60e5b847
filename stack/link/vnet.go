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
	// VnetGSOUDPL4 is UDP segmentation offload (USO): datagrams of
	// GSOSize bytes in one frame, with TUN_F_USO4/6 (Linux 6.2).
	VnetGSOUDPL4 = 5

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

// offload says whether the TAP's frames carry a virtio-net header, and
// tells gVisor what follows for GSO. Endpoint embeds it.
type offload struct {
	// vnet: every frame carries a virtio-net header (IFF_VNET_HDR), and
	// TCP goes both ways as 64 KiB super-frames. Set before the NIC is
	// created, read only then.
	vnet bool
	// uso: the TAP takes and gives UDP super-frames (TUN_F_USO4/6).
	uso bool
}

// EnableVnetHdr declares that the TAP was opened with IFF_VNET_HDR and
// offloads set (tap.SetOffload). Call it before the NIC is created.
func (o *offload) EnableVnetHdr() { o.vnet = true }

// VnetHdr says whether every frame carries a virtio-net header.
func (o *offload) VnetHdr() bool { return o.vnet }

// EnableUSO declares that the TAP's offloads include UDP segmentation
// (tap.SetOffload reported it). Call it after EnableVnetHdr, before the
// NIC is created.
func (o *offload) EnableUSO() { o.uso = o.vnet }

// USO says whether the TAP takes and gives UDP super-frames.
func (o *offload) USO() bool { return o.uso }

// GSOMaxSize implements stack.GSOEndpoint.
func (o *offload) GSOMaxSize() uint32 {
	if o.vnet {
		return gsoMaxSize
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint: with virtio-net headers the
// kernel segments and checksums what the stack sends.
func (o *offload) SupportedGSO() stack.SupportedGSO {
	if o.vnet {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}
