package fastpath

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"github.com/rootlessnet/rootlessnet/stack/link"
)

// A UDP datagram from the container costs the netstack more than the
// two syscalls that move it (a UDP flood spent 45% of the read loop in
// gVisor's IP and UDP layers and the endpoint's queue), and a UDP flow
// keeps no state the stack must see. Once the forwarder has set a flow up
// it registers a sink here, and the read loop hands the flow's datagrams
// straight to it; the first datagram of a flow, fragments, IP options
// and everything else still go through the stack. The other way, WriteUDP
// makes the headers of a host's datagram itself and writes it to the TAP.

type udpFlowKey struct{ src, dst netip.AddrPort }

// UDPSink takes a UDP flow's datagrams from the container, on the read
// loop: it must not block. With a multi-queue TAP the flow's datagrams
// may come from several loops, but the sink is called by one at a time.
// An alias of an unnamed interface, so that the forwarder can name the
// same type without importing the fast path.
type UDPSink = interface {
	// Datagram takes one datagram's payload in pieces, valid only during
	// the call; or, with seg > 0, a run of datagrams of seg bytes each,
	// the last possibly shorter (a USO super-frame of the container's).
	Datagram(payload [][]byte, seg int)
	// Flush ends a burst: the read loop calls it once it has read what
	// the TAP had, after one Datagram or more. A sink that holds
	// datagrams to send them as one sends them now.
	Flush()
}

// UDPService answers datagrams to an address of the gateway's own (the
// DNS address) from any source, on the read loop: it must not block, and
// payload is valid only during the call. It is called by one loop at a
// time.
type UDPService func(src netip.AddrPort, payload [][]byte)

// udpShortcut is the fast path's table of UDP flows. What a read loop
// keeps between datagrams (its scratch, the flows to flush) is its
// queue's (rxQueue).
type udpShortcut struct {
	*core
	mu       sync.RWMutex
	flows    map[udpFlowKey]*udpFlow
	services map[netip.AddrPort]*udpService
	// n is len(flows)+len(services): the read loop skips the lookup
	// while it is 0.
	n atomic.Int32
	// seed keys the hash that picks a flow's queue for WriteUDP.
	seed maphash.Seed
	// nextLoop picks the loop of a host socket WatchHost serves, in
	// turn.
	nextLoop atomic.Uint32
}

// udpFlow is a registered flow's sink. With several queues, mu makes
// their loops take turns with it: a flow's datagrams come on the queue
// that last wrote one of its frames, and that may change under a burst.
type udpFlow struct {
	mu   sync.Mutex
	sink UDPSink
}

// udpService is a registered service, taking turns as udpFlow.
type udpService struct {
	mu  sync.Mutex
	svc UDPService
}

// AddUDPFlow hands the datagrams from the container's src to dst to sink
// from now on, until remove (idempotent) is called. A pcap sniffer on the
// link would not see these datagrams.
func (p *Path) AddUDPFlow(src, dst netip.AddrPort, sink UDPSink) (remove func()) {
	return register(&p.udp, &p.udp.flows, udpFlowKey{src: src, dst: dst}, &udpFlow{sink: sink})
}

// AddUDPService hands every datagram to dst that no flow takes to svc,
// until remove (idempotent) is called.
func (p *Path) AddUDPService(dst netip.AddrPort, svc UDPService) (remove func()) {
	return register(&p.udp, &p.udp.services, dst, &udpService{svc: svc})
}

// register puts v in the table *m of u under key, counted in u.n, and
// returns what takes it out again (once).
func register[K comparable, V any](u *udpShortcut, m *map[K]V, key K, v V) (remove func()) {
	u.mu.Lock()
	if *m == nil {
		*m = map[K]V{}
	}
	if _, dup := (*m)[key]; !dup {
		u.n.Add(1)
	}
	(*m)[key] = v
	u.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			if _, ok := (*m)[key]; ok {
				delete(*m, key)
				u.n.Add(-1)
			}
			u.mu.Unlock()
		})
	}
}

// intercept hands a frame read from the TAP's queue rq, whose first bytes
// are hdr and the rest rest, to the sink of its flow and reports whether
// it did. It runs on the queue's read loop (which skips it while no flow
// is registered) before the frame becomes a gVisor buffer, so that a
// datagram that skips the stack costs no copy.
func (u *udpShortcut) intercept(rq *rxQueue, hdr, rest []byte, udpSeg int) bool {
	if len(hdr) < header.EthernetMinimumSize {
		return false
	}
	if string(hdr[:header.EthernetAddressSize]) != string(u.mac) { // no string made per frame
		return false
	}
	src, dst, off, n, ok := parseUDP(hdr, len(hdr)+len(rest))
	if !ok {
		return false
	}
	u.mu.RLock()
	flow := u.flows[udpFlowKey{src: src, dst: dst}]
	var svc *udpService
	if flow == nil && len(u.services) > 0 && udpSeg == 0 {
		svc = u.services[dst]
	}
	u.mu.RUnlock()
	if flow == nil && svc == nil {
		return false
	}
	u.link.LearnGuest(hdr)
	iovs := framePieces(rq.udpIovs[:0], hdr, rest, off, n)
	multi := u.multiQueue()
	if flow != nil {
		if udpSeg >= n {
			udpSeg = 0
		}
		if multi {
			flow.mu.Lock()
		}
		flow.sink.Datagram(iovs, udpSeg)
		if multi {
			flow.mu.Unlock()
		}
		u.markDirty(rq, flow)
	} else {
		if multi {
			svc.mu.Lock()
		}
		svc.svc(src, iovs)
		if multi {
			svc.mu.Unlock()
		}
	}
	clear(iovs)
	rq.udpIovs = iovs[:0]
	u.stats.UDPShortcutIn.Add(1)
	return true
}

// markDirty notes that flow's sink must be flushed at the end of rq's
// burst.
func (u *udpShortcut) markDirty(rq *rxQueue, flow *udpFlow) {
	for _, d := range rq.dirty {
		if d == flow {
			return
		}
	}
	if len(rq.dirty) == cap(rq.dirty) && len(rq.dirty) >= 64 {
		u.flush(rq) // a burst over many flows: no list grows without bound
	}
	rq.dirty = append(rq.dirty, flow)
}

// flush ends rq's burst: every sink given a datagram sends what it
// holds. Another queue's loop may have flushed it already (with several
// queues a flow is on two lists at times): then it has nothing to send.
func (u *udpShortcut) flush(rq *rxQueue) {
	multi := u.multiQueue()
	for i, d := range rq.dirty {
		if multi {
			d.mu.Lock()
		}
		d.sink.Flush()
		if multi {
			d.mu.Unlock()
		}
		rq.dirty[i] = nil
	}
	rq.dirty = rq.dirty[:0]
}

// txQueue is the queue of the datagrams WriteUDP sends from src to the
// container's dst: one per flow, so that the kernel steers the flow's
// datagrams from the container to one queue (see Path).
func (u *udpShortcut) txQueue(src, dst netip.AddrPort) int {
	n := u.link.ActiveQueues()
	if n <= 1 {
		return 0
	}
	h := maphash.Comparable(u.seed, udpFlowKey{src: dst, dst: src})
	return int(h % uint64(n))
}

// parseUDP finds an unfragmented UDP datagram without IP options or
// extension headers in the headers hdr of an Ethernet frame of frameLen
// bytes, and returns its addresses, where its payload starts in the frame
// and its length. Checksums are not checked: the stack does not check
// them either on a TAP (RX checksum offload), except the IPv4 header's.
func parseUDP(hdr []byte, frameLen int) (src, dst netip.AddrPort, off, n int, ok bool) {
	const eth = header.EthernetMinimumSize
	if len(hdr) < eth {
		return
	}
	var srcIP, dstIP netip.Addr
	var ipLen int // the IP packet's length as its header gives it
	switch binary.BigEndian.Uint16(hdr[12:14]) {
	case uint16(header.IPv4ProtocolNumber):
		ip := header.IPv4(hdr[eth:])
		if len(ip) < header.IPv4MinimumSize+header.UDPMinimumSize ||
			ip[0] != 0x45 || // version 4, no options
			ip.Protocol() != uint8(header.UDPProtocolNumber) ||
			ip.More() || ip.FragmentOffset() != 0 ||
			!ip.IsChecksumValid() {
			return
		}
		ipLen = int(ip.TotalLength())
		srcIP = netip.AddrFrom4([4]byte(ip[12:16]))
		dstIP = netip.AddrFrom4([4]byte(ip[16:20]))
		off = eth + header.IPv4MinimumSize
	case uint16(header.IPv6ProtocolNumber):
		ip := header.IPv6(hdr[eth:])
		if len(ip) < header.IPv6MinimumSize+header.UDPMinimumSize ||
			ip[0]>>4 != 6 ||
			ip.NextHeader() != uint8(header.UDPProtocolNumber) {
			return
		}
		ipLen = header.IPv6MinimumSize + int(ip.PayloadLength())
		srcIP = netip.AddrFrom16([16]byte(ip[8:24]))
		dstIP = netip.AddrFrom16([16]byte(ip[24:40]))
		off = eth + header.IPv6MinimumSize
	default:
		return
	}
	// The frame may be longer (Ethernet padding), never shorter.
	if eth+ipLen > frameLen {
		return
	}
	udp := header.UDP(hdr[off:])
	l := int(udp.Length())
	if l < header.UDPMinimumSize || off+l > eth+ipLen {
		return
	}
	src = netip.AddrPortFrom(srcIP, udp.SourcePort())
	dst = netip.AddrPortFrom(dstIP, udp.DestinationPort())
	return src, dst, off + header.UDPMinimumSize, l - header.UDPMinimumSize, true
}

// udpHeadersMax is the room for the virtio-net, Ethernet, IPv6 and UDP
// headers of a datagram WriteUDP makes.
const udpHeadersMax = link.VnetHdrSize + header.EthernetMinimumSize + header.IPv6MinimumSize + header.UDPMinimumSize

// udpWriteScratch is what write needs for one frame's headers: pooled,
// since WriteUDP runs on many goroutines and a frame's headers made on the
// stack escaped to the heap through the link's interface.
type udpWriteScratch struct {
	hdrs   [udpHeadersMax]byte
	pieces [2][]byte
}

var udpScratch = sync.Pool{New: func() any { return new(udpWriteScratch) }}

// MaxUDPSegments bounds the datagrams of one WriteUDPBatch sent as one
// frame (the kernel's UDP_MAX_SEGMENTS was 64 before Linux 6.x).
const MaxUDPSegments = 64

// WriteUDP sends payload to the container as one datagram from src to dst
// (both IPv4 or both IPv6), past the stack, and reports whether it took
// it: not before the container's MAC is known, nor for a datagram that
// would need IP fragments; the caller then sends it through the stack. A
// full TAP queue drops the datagram, as it drops the stack's frames.
func (p *Path) WriteUDP(src, dst netip.AddrPort, payload []byte) bool {
	return p.udp.write(src, dst, payload, 0)
}

// WriteUDPBatch sends payload to the container as datagrams of seg bytes
// each (the last may be shorter), as WriteUDP sends one. Where the TAP
// takes UDP segmentation offload (link.USO) they go as one frame that the
// kernel splits; elsewhere one frame each. It reports false, having sent
// nothing, where WriteUDP would for a datagram of seg bytes.
func (p *Path) WriteUDPBatch(src, dst netip.AddrPort, payload []byte, seg int) bool {
	if seg <= 0 || len(payload) <= seg {
		return p.udp.write(src, dst, payload, 0)
	}
	if p.udp.link.USO() && len(payload) <= seg*MaxUDPSegments && len(payload) <= maxUDPGSOPayload(src.Addr().Is4()) {
		return p.udp.write(src, dst, payload, seg)
	}
	for off := 0; off < len(payload); off += seg {
		if !p.udp.write(src, dst, payload[off:min(off+seg, len(payload))], 0) {
			return off > 0
		}
	}
	return true
}

// maxUDPGSOPayload is the most payload one IP packet holds: the IPv4
// total length, or the IPv6 payload length, counts to 65535.
func maxUDPGSOPayload(v4 bool) int {
	if v4 {
		return 0xffff - header.IPv4MinimumSize - header.UDPMinimumSize
	}
	return 0xffff - header.UDPMinimumSize
}

// write sends payload as one datagram (seg 0), or as a GSO frame of
// datagrams of seg bytes that the kernel splits and checksums.
func (u *udpShortcut) write(src, dst netip.AddrPort, payload []byte, seg int) bool {
	guest, ok := u.link.GuestMACFor(dst.Addr())
	if !ok || src.Addr().Is4() != dst.Addr().Is4() {
		return false
	}
	v4 := src.Addr().Is4()
	ipLen := header.IPv6MinimumSize
	proto := header.IPv6ProtocolNumber
	if v4 {
		ipLen = header.IPv4MinimumSize
		proto = header.IPv4ProtocolNumber
	}
	udpLen := header.UDPMinimumSize + len(payload)
	mtuPayload := len(payload)
	if seg > 0 {
		mtuPayload = seg
	}
	if ipLen+header.UDPMinimumSize+mtuPayload > int(u.link.MTU()) {
		return false
	}
	sc := udpScratch.Get().(*udpWriteScratch)
	defer udpScratch.Put(sc)
	buf := &sc.hdrs
	*buf = [udpHeadersMax]byte{}
	frame := buf[link.VnetHdrSize:]
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: u.mac, DstAddr: guest, Type: proto})
	ip := frame[header.EthernetMinimumSize:]
	var srcA, dstA tcpip.Address
	if v4 {
		srcA, dstA = tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
		h := header.IPv4(ip)
		h.Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + udpLen),
			ID:          uint16(u.ipID.Add(1)),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     srcA,
			DstAddr:     dstA,
		})
		h.SetChecksum(^h.CalculateChecksum())
	} else {
		srcA, dstA = tcpip.AddrFrom16(src.Addr().As16()), tcpip.AddrFrom16(dst.Addr().As16())
		header.IPv6(ip).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(udpLen),
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           srcA,
			DstAddr:           dstA,
		})
	}
	uh := header.UDP(ip[ipLen:])
	uh.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(udpLen)})
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, srcA, dstA, uint16(udpLen))
	if seg > 0 {
		// The kernel splits the frame and completes each datagram's
		// checksum from the pseudo-header's sum (a partial checksum,
		// as a NIC's offload takes it).
		uh.SetChecksum(xsum)
		vh := link.VnetHeader{
			Flags:      link.VnetNeedsCsum,
			GSOType:    link.VnetGSOUDPL4,
			HdrLen:     uint16(header.EthernetMinimumSize + ipLen + header.UDPMinimumSize),
			GSOSize:    uint16(seg),
			CsumStart:  uint16(header.EthernetMinimumSize + ipLen),
			CsumOffset: udpChecksumOffset,
		}
		vh.Encode(buf[:link.VnetHdrSize])
	} else {
		// The virtio-net header stays zero: a complete packet.
		c := ^uh.CalculateChecksum(checksum.Checksum(payload, xsum))
		if c == 0 {
			c = 0xffff // 0 would mean "no checksum"
		}
		uh.SetChecksum(c)
	}

	hdrs := buf[:link.VnetHdrSize+header.EthernetMinimumSize+ipLen+header.UDPMinimumSize]
	if !u.link.VnetHdr() {
		hdrs = hdrs[link.VnetHdrSize:]
	}
	sc.pieces = [2][]byte{hdrs, payload}
	err := u.link.WritePieces(u.txQueue(src, dst), sc.pieces[:])
	sc.pieces = [2][]byte{}
	if err != nil {
		return true
	}
	u.stats.UDPShortcutOut.Add(1)
	return true
}

// udpChecksumOffset is where the checksum lies in a UDP header.
const udpChecksumOffset = 6

// WatchHost calls onReadable on the read loop whenever the host socket
// conn has something queued (level-triggered: again until it has read it
// all; a call should read a bounded amount, for the loop's other fds),
// until stop. Call stop before closing conn; onReadable must read through
// conn's RawConn, which fails harmlessly on a socket closed while a call
// is under way. A UDP flow's replies served by the loop are handled as
// soon as the loop sees them, like a TCP flow's, rather than by a
// goroutine the scheduler must wake (a thread woken on an idle CPU of a
// VM took tens of microseconds of each round trip).
func (p *Path) WatchHost(conn syscall.Conn, onReadable func()) (stop func(), err error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return nil, err
	}
	// With several queues the sockets take the loops in turn: each is
	// served by one loop, always the same.
	loop := p.queues[0].loop
	if n := len(p.queues); n > 1 {
		loop = p.queues[p.udp.nextLoop.Add(1)%uint32(n)].loop
	}
	if err := loop.Add(fd, eventloop.Level, readableFunc(onReadable)); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { loop.Remove(fd) }) }, nil
}

// readableFunc is an eventloop.Handler that calls itself.
type readableFunc func()

func (f readableFunc) OnPoll(uint32) { f() }
