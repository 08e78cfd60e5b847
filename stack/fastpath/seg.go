package fastpath

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/rootlessnet/rootlessnet/stack/link"
)

// The byte work of the TCP fast path (tcp.go): reading the container's
// segments and writing ours. Pure functions, tested by tables.

// TCP flags as they sit in the header's flags byte.
const (
	flagFIN = header.TCPFlagFin
	flagSYN = header.TCPFlagSyn
	flagRST = header.TCPFlagRst
	flagPSH = header.TCPFlagPsh
	flagACK = header.TCPFlagAck
)

// tcpSeg is a TCP segment from the container, as parseTCP finds it.
type tcpSeg struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    header.TCPFlags
	wnd      uint16
	// mss and wscale come from a SYN's options: 0 and -1 when absent.
	mss    uint16
	wscale int
	// off and n place the payload in the frame.
	off, n int
}

// parseTCP finds an unfragmented TCP segment without IP options or IPv6
// extension headers in the headers hdr of an Ethernet frame of frameLen
// bytes. The TCP header must lie within hdr. Checksums are not checked:
// the stack does not check them on a TAP either (RX checksum offload),
// except the IPv4 header's. A super-frame (virtio-net GSO) is one segment.
func parseTCP(hdr []byte, frameLen int) (s tcpSeg, ok bool) {
	const eth = header.EthernetMinimumSize
	if len(hdr) < eth {
		return s, false
	}
	var srcIP, dstIP netip.Addr
	var ipLen, off int
	switch binary.BigEndian.Uint16(hdr[12:14]) {
	case uint16(header.IPv4ProtocolNumber):
		ip := header.IPv4(hdr[eth:])
		if len(ip) < header.IPv4MinimumSize+header.TCPMinimumSize ||
			ip[0] != 0x45 ||
			ip.Protocol() != uint8(header.TCPProtocolNumber) ||
			ip.More() || ip.FragmentOffset() != 0 ||
			!ip.IsChecksumValid() {
			return s, false
		}
		ipLen = int(ip.TotalLength())
		srcIP = netip.AddrFrom4([4]byte(ip[12:16]))
		dstIP = netip.AddrFrom4([4]byte(ip[16:20]))
		off = eth + header.IPv4MinimumSize
	case uint16(header.IPv6ProtocolNumber):
		ip := header.IPv6(hdr[eth:])
		if len(ip) < header.IPv6MinimumSize+header.TCPMinimumSize ||
			ip[0]>>4 != 6 ||
			ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return s, false
		}
		ipLen = header.IPv6MinimumSize + int(ip.PayloadLength())
		srcIP = netip.AddrFrom16([16]byte(ip[8:24]))
		dstIP = netip.AddrFrom16([16]byte(ip[24:40]))
		off = eth + header.IPv6MinimumSize
	default:
		return s, false
	}
	if eth+ipLen > frameLen || eth+ipLen < off+header.TCPMinimumSize {
		return s, false
	}
	t := header.TCP(hdr[off:])
	doff := int(t.DataOffset())
	if doff < header.TCPMinimumSize || off+doff > eth+ipLen || off+doff > len(hdr) {
		return s, false
	}
	s = tcpSeg{
		src:    netip.AddrPortFrom(srcIP, t.SourcePort()),
		dst:    netip.AddrPortFrom(dstIP, t.DestinationPort()),
		seq:    t.SequenceNumber(),
		ack:    t.AckNumber(),
		flags:  t.Flags(),
		wnd:    t.WindowSize(),
		wscale: -1,
		off:    off + doff,
		n:      eth + ipLen - off - doff,
	}
	if s.flags&flagSYN != 0 {
		s.mss, s.wscale = synOptions(hdr[off+header.TCPMinimumSize : off+doff])
	}
	return s, true
}

// synOptions reads the MSS and window scale options of a SYN.
func synOptions(opts []byte) (mss uint16, wscale int) {
	wscale = -1
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return mss, wscale
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) {
			return mss, wscale
		}
		l := int(opts[i+1])
		if l < 2 || i+l > len(opts) {
			return mss, wscale
		}
		switch {
		case opts[i] == header.TCPOptionMSS && l == 4:
			mss = binary.BigEndian.Uint16(opts[i+2:])
		case opts[i] == header.TCPOptionWS && l == 3:
			wscale = min(int(opts[i+2]), header.MaxWndScale)
		}
		i += l
	}
	return mss, wscale
}

// tcpOut describes a segment to the container.
type tcpOut struct {
	srcMAC, dstMAC tcpip.LinkAddress
	src, dst       netip.AddrPort
	seq, ack       uint32
	flags          header.TCPFlags
	wnd            uint16
	// synMSS and synWS are a SYN-ACK's options (synWS < 0: none).
	synMSS uint16
	synWS  int
	ipID   uint16
	// payload is the data's length; sum its checksum (only used without
	// virtio-net headers, when the TCP checksum is made here).
	payload int
	sum     uint16
	// vnet: a virtio-net header leads, and the kernel finishes the TCP
	// checksum; gsoMSS > 0 also has it cut a payload above gsoMSS into
	// segments.
	vnet   bool
	gsoMSS int
}

// tcpHeadersMax is the room buildTCP needs.
const tcpHeadersMax = link.VnetHdrSize + header.EthernetMinimumSize + header.IPv6MinimumSize + header.TCPMinimumSize + 8

// buildTCP writes the headers of o into b (at least tcpHeadersMax bytes)
// and returns their length; the payload follows them on the wire.
func buildTCP(b []byte, o *tcpOut) int {
	start := 0
	if o.vnet {
		start = link.VnetHdrSize
	}
	v4 := o.src.Addr().Is4()
	ipLen, proto := header.IPv6MinimumSize, header.IPv6ProtocolNumber
	if v4 {
		ipLen, proto = header.IPv4MinimumSize, header.IPv4ProtocolNumber
	}
	tcpLen := header.TCPMinimumSize
	if o.flags&flagSYN != 0 {
		tcpLen += 4 // MSS
		if o.synWS >= 0 {
			tcpLen += 4 // NOP, window scale
		}
	}
	frame := b[start:]
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: o.srcMAC, DstAddr: o.dstMAC, Type: proto})
	ip := frame[header.EthernetMinimumSize:]
	var srcA, dstA tcpip.Address
	segLen := tcpLen + o.payload
	if v4 {
		srcA, dstA = tcpip.AddrFrom4(o.src.Addr().As4()), tcpip.AddrFrom4(o.dst.Addr().As4())
		h := header.IPv4(ip)
		h.Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + segLen),
			ID:          o.ipID,
			Flags:       header.IPv4FlagDontFragment,
			TTL:         64,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     srcA,
			DstAddr:     dstA,
		})
		h.SetChecksum(^h.CalculateChecksum())
	} else {
		srcA, dstA = tcpip.AddrFrom16(o.src.Addr().As16()), tcpip.AddrFrom16(o.dst.Addr().As16())
		header.IPv6(ip).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(segLen),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           srcA,
			DstAddr:           dstA,
		})
	}
	t := header.TCP(ip[ipLen:])
	t.Encode(&header.TCPFields{
		SrcPort:    o.src.Port(),
		DstPort:    o.dst.Port(),
		SeqNum:     o.seq,
		AckNum:     o.ack,
		DataOffset: uint8(tcpLen),
		Flags:      o.flags,
		WindowSize: o.wnd,
	})
	if o.flags&flagSYN != 0 {
		opts := t[header.TCPMinimumSize:tcpLen]
		opts[0], opts[1] = header.TCPOptionMSS, 4
		binary.BigEndian.PutUint16(opts[2:], o.synMSS)
		if o.synWS >= 0 {
			opts[4], opts[5], opts[6], opts[7] = header.TCPOptionNOP, header.TCPOptionWS, 3, byte(o.synWS)
		}
	}
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, srcA, dstA, uint16(segLen))
	hdrEnd := start + header.EthernetMinimumSize + ipLen + tcpLen
	if o.vnet {
		// CHECKSUM_PARTIAL: the pseudo-header's sum in the field, the
		// kernel adds the segment's.
		t.SetChecksum(xsum)
		h := link.VnetHeader{
			Flags:      link.VnetNeedsCsum,
			HdrLen:     uint16(hdrEnd - start),
			CsumStart:  uint16(header.EthernetMinimumSize + ipLen),
			CsumOffset: header.TCPChecksumOffset,
		}
		if o.gsoMSS > 0 && o.payload > o.gsoMSS {
			h.GSOType = link.VnetGSOTCPv6
			if v4 {
				h.GSOType = link.VnetGSOTCPv4
			}
			h.GSOSize = uint16(o.gsoMSS)
		}
		h.Encode(b[:link.VnetHdrSize])
	} else {
		xsum = checksum.Combine(xsum, o.sum)
		t.SetChecksum(^t.CalculateChecksum(xsum))
	}
	return hdrEnd
}

// Sequence-space comparisons, modulo 2^32.
func seqLT(a, b uint32) bool  { return int32(a-b) < 0 }
func seqLEQ(a, b uint32) bool { return int32(a-b) <= 0 }
func seqGT(a, b uint32) bool  { return int32(a-b) > 0 }

// segWriter writes a flow's segments to the link: the headers built in
// its scratch, the payload from the caller's pieces.
type segWriter struct {
	hdr  [tcpHeadersMax]byte
	iovs [][]byte
}

// write sends o, whose payload is in pieces, on c's link's queue q.
func (w *segWriter) write(c *core, q int, o *tcpOut, payload [][]byte) {
	if o.src.Addr().Is4() {
		o.ipID = uint16(c.ipID.Add(1))
	}
	if !o.vnet && o.payload > 0 {
		var sum checksum.Checksumer
		for _, p := range payload {
			sum.Add(p)
		}
		o.sum = sum.Checksum()
	}
	hl := buildTCP(w.hdr[:], o)
	iovs := append(w.iovs[:0], w.hdr[:hl])
	iovs = append(iovs, payload...)
	c.link.WritePieces(q, iovs)
	clear(iovs)
	w.iovs = iovs[:0]
}
