// Package vxlan carries a rootless network's frames between hosts as
// standard VXLAN (RFC 7348): each Ethernet frame in a UDP datagram behind
// an 8-byte header naming the network (VNI), so that a host running
// rootlessnet interoperates with the kernel's vxlan devices, Docker's
// overlay data plane and flannel's vxlan backend.
package vxlan

import (
	"encoding/binary"
	"errors"
)

// HeaderLen is the VXLAN header's size.
const HeaderLen = 8

// Overhead is what VXLAN over IPv4 adds to a frame on the wire: the outer
// Ethernet (14), IPv4 (20), UDP (8) and VXLAN (8) headers. Members' MTU
// is the underlay's minus this, as the kernel's vxlan driver computes it.
const Overhead = 50

// DefaultPort is IANA's VXLAN port.
const DefaultPort = 4789

// flagVNI is the I flag: the VNI is valid (RFC 7348 section 5).
const flagVNI = 0x08

// MaxVNI is the largest 24-bit network identifier.
const MaxVNI = 1<<24 - 1

// Errors of Decode.
var (
	ErrShort = errors.New("vxlan: shorter than a header and an Ethernet header")
	ErrFlags = errors.New("vxlan: the I flag is not set")
)

// Encode writes the header for vni into b[:HeaderLen].
func Encode(b []byte, vni uint32) {
	b[0], b[1], b[2], b[3] = flagVNI, 0, 0, 0
	binary.BigEndian.PutUint32(b[4:], vni<<8)
}

// Decode returns the VNI of a VXLAN datagram and the frame it carries.
// The reserved bits are ignored on receipt, as RFC 7348 says.
func Decode(b []byte) (vni uint32, frame []byte, err error) {
	if len(b) < HeaderLen+14 {
		return 0, nil, ErrShort
	}
	if b[0]&flagVNI == 0 {
		return 0, nil, ErrFlags
	}
	return binary.BigEndian.Uint32(b[4:]) >> 8, b[HeaderLen:], nil
}
