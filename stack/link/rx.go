package link

import (
	"encoding/binary"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// Receive buffers. A frame is read straight into gVisor chunks: its
// first rxHdrSize bytes into a small chunk of their own, the rest into a
// pooled 64 KiB chunk. A large frame keeps both, so a TCP super-frame
// reaches the stack without the copy buffer.MakeWithData makes (a 64 KiB
// allocation and memmove per frame, about a tenth of the CPU at 8
// Gbit/s). The headers get their own chunk because gVisor's IPv4 and
// IPv6 receive paths read the network header while holding a second
// reference to its chunk, and a shared chunk is copied whole on access
// (buffer.PullUp): 16% of the CPU of a bulk transfer when the headers
// shared the payload's 64 KiB chunk. A small frame is copied into a
// chunk of its own size, so that a few bytes waiting in a receive queue
// do not pin 64 KiB, and the big chunk is read into again.
const (
	// rxHdrSize holds Ethernet, IP and TCP headers with options.
	rxHdrSize  = 128
	rxHeadSize = buffer.MaxChunkSize
	// rxCopyBelow is the frame size under which copying is cheaper
	// than giving away the 64 KiB chunk (which the pool clears).
	rxCopyBelow = 8 << 10
)

// The largest frame fits the two chunks (a negative constant would not
// convert to uint).
const _ = uint(rxHdrSize + rxHeadSize - (MaxFrame - VnetHdrSize))

// tapReader is the TAP's read loop, on the event loop (its Handler):
// one frame per call, offered to the Interceptor, then checked and
// handed to the stack. It keeps between the loop's calls the 64 KiB
// chunk the next frame's payload goes to, and the buffer its headers go
// to. A frame becomes gVisor buffers only when the stack takes it: the
// fast paths take most, and a view per frame was a pool round trip and a
// clear each.
//
// Each queue of the TAP has its reader, on its own loop.
type tapReader struct {
	e *Endpoint
	// index is the queue's number; tap its fd, poll its loop.
	index  int
	tap    *tapFD
	poll   *eventloop.Loop
	head   *buffer.View
	hdr    [rxHdrSize]byte
	vhdr   [VnetHdrSize]byte
	iovs   [][]byte
	failed bool
}

func (r *tapReader) release() {
	if r.head != nil {
		r.head.Release()
		r.head = nil
	}
}

// rxBurst bounds the frames read per wake-up of the loop, so that the
// loop's other fds (host sockets of the fast path) get their turn.
const rxBurst = 64

// OnPoll reads a frame and, while the Interceptor holds frames to send as
// one (Holding), the frames queued behind it, up to rxBurst (the TAP is
// level-triggered: the loop comes back for the rest); then it flushes the
// Interceptor. Reading until EAGAIN costs one read more per burst: worth
// it for a burst of datagrams sent on as one, not for a request/response
// exchange's single frame (a round trip's p50 took 10% longer).
func (r *tapReader) OnPoll(uint32) {
	icpt := r.e.icpt
	for i := 0; i < rxBurst && !r.failed && r.readFrame(); i++ {
		if icpt == nil || !icpt.Holding(r.index) {
			break
		}
	}
	if icpt != nil {
		icpt.Flush(r.index)
	}
}

// readFrame reads and delivers one frame, and reports whether the TAP
// had one.
func (r *tapReader) readFrame() bool {
	e := r.e
	if r.head == nil {
		r.head = buffer.NewViewSize(rxHeadSize)
	}
	iovs := r.iovs[:0]
	if e.vnet {
		iovs = append(iovs, r.vhdr[:])
	}
	iovs = append(iovs, r.hdr[:], r.head.AsSlice())
	r.iovs = iovs
	n, err := r.tap.readv(iovs)
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		if err == unix.EAGAIN {
			return false
		}
		r.failed = true
		r.poll.Remove(r.tap.fd)
		if !e.closed.Load() && e.onReadError != nil {
			e.onReadError(err)
			r.poll.HandOff()
		}
		return false
	}
	if e.vnet {
		// Checksums may be partial (the kernel leaves them to the
		// receiver: RX checksum offload covers that) and TCP may
		// come as one super-frame, which the stack takes whole.
		if n < VnetHdrSize {
			e.stats.RxDropped.Add(1)
			return true
		}
		n -= VnetHdrSize
	}
	udpSeg := 0
	if e.vnet && r.vhdr[1] == VnetGSOUDPL4 {
		udpSeg = int(binary.LittleEndian.Uint16(r.vhdr[4:]))
	}
	hdr, rest := r.hdr[:], []byte(nil)
	if n > rxHdrSize {
		rest = r.head.AsSlice()[:n-rxHdrSize]
	} else {
		hdr = hdr[:n]
	}
	if e.icpt != nil && e.icpt.Intercept(r.index, hdr, rest, udpSeg) {
		return true
	}
	if udpSeg > 0 && n > rxHdrSize {
		r.deliverUDPRun(hdr, rest, udpSeg)
		return true
	}
	frame := buffer.MakeWithView(buffer.NewViewWithData(hdr))
	if n <= rxHdrSize {
		r.deliver(frame)
		return true
	}
	if n < rxCopyBelow {
		frame.Append(buffer.NewViewWithData(rest))
	} else {
		r.head.CapLength(len(rest))
		frame.Append(r.head)
		r.head = nil
	}
	r.deliver(frame)
	return true
}

// deliverUDPRun hands the stack the datagrams of a UDP super-frame one by
// one (it would take the run for one datagram).
func (r *tapReader) deliverUDPRun(hdr, rest []byte, seg int) {
	frame := make([]byte, 0, len(hdr)+len(rest))
	frame = append(append(frame, hdr...), rest...)
	scratch := make([]byte, MaxFrame)
	if !SplitUDP(frame, seg, scratch, func(f []byte) {
		r.deliver(buffer.MakeWithData(f))
	}) {
		r.e.stats.RxDropped.Add(1)
	}
}

// deliver hands one frame to the stack, which takes it over. Frames for
// other unicast MACs are dropped here: the container may still talk to a
// neighbour it knew.
func (r *tapReader) deliver(frame buffer.Buffer) {
	e := r.e
	// Every check below looks only at headers, which lie in the first
	// view (small frames are one view; large ones start with 64 KiB).
	hdr := firstView(&frame)
	if len(hdr) < header.EthernetMinimumSize {
		e.stats.RxDropped.Add(1)
		frame.Release()
		return
	}
	eth := header.Ethernet(hdr)
	dst := eth.DestinationAddress()
	if dst != e.mac && !header.IsMulticastEthernetAddress(dst) && dst != header.EthernetBroadcastAddress {
		e.stats.RxDropped.Add(1)
		frame.Release()
		return
	}
	e.LearnGuest(hdr)
	if e.onRouterSolicit != nil && isRouterSolicit(hdr) {
		e.onRouterSolicit()
		r.poll.HandOff()
	}
	e.dispatch(frame, r.poll)
}

// guestAddr is the container's MAC: the source of the last unicast frame
// from it, where frames that bypass the stack are sent. On a bridge
// (EnableBridge: several guests behind the TAP) it also keeps each
// guest's MAC by IP address, learned the same way, so that what bypasses
// the stack reaches the guest it is for. Endpoint embeds it.
type guestAddr struct {
	guestMAC atomic.Pointer[tcpip.LinkAddress]

	bridged atomic.Bool
	mu      sync.RWMutex
	byIP    map[netip.Addr]tcpip.LinkAddress
}

// maxBridgeGuests bounds the guests a bridge's table keeps: a guest that
// sends from ever new source addresses must not grow it without end. A
// full table starts again; a guest not yet seen again is written to
// through the stack, which asks with ARP or NDP.
const maxBridgeGuests = 4096

// EnableBridge says the TAP is a bridge's port with several guests
// behind it: GuestMACFor then answers for each guest's own address.
func (g *guestAddr) EnableBridge() { g.bridged.Store(true) }

// LearnGuest notes the sender of a frame from the TAP, hdr its first
// bytes (the Ethernet header and, on a bridge, the IP or ARP header
// after it): its source MAC as the container's, and on a bridge as the
// MAC of its source address. It runs on the read loop.
func (g *guestAddr) LearnGuest(hdr []byte) {
	if len(hdr) < header.EthernetMinimumSize {
		return
	}
	src := hdr[header.EthernetAddressSize : 2*header.EthernetAddressSize]
	if p := g.guestMAC.Load(); p == nil || string(*p) != string(src) { // no string made per frame
		g.LearnGuestMAC(tcpip.LinkAddress(src))
	}
	if !g.bridged.Load() {
		return
	}
	ip, ok := FrameSource(hdr)
	if !ok || !header.IsValidUnicastEthernetAddress(tcpip.LinkAddress(src)) {
		return
	}
	g.mu.RLock()
	known, had := g.byIP[ip]
	g.mu.RUnlock()
	if had && string(known) == string(src) {
		return
	}
	g.mu.Lock()
	if g.byIP == nil || len(g.byIP) >= maxBridgeGuests && !had {
		g.byIP = map[netip.Addr]tcpip.LinkAddress{}
	}
	g.byIP[ip] = tcpip.LinkAddress(src)
	g.mu.Unlock()
}

// LearnGuestMAC remembers src, a frame's source, as the container's MAC.
func (g *guestAddr) LearnGuestMAC(src tcpip.LinkAddress) {
	if p := g.guestMAC.Load(); p != nil && *p == src {
		return
	}
	if header.IsValidUnicastEthernetAddress(src) {
		mac := src // on the heap only when it changes
		g.guestMAC.Store(&mac)
	}
}

// GuestMAC returns the container's MAC once a frame from it was seen.
func (g *guestAddr) GuestMAC() (tcpip.LinkAddress, bool) {
	p := g.guestMAC.Load()
	if p == nil {
		return "", false
	}
	return *p, true
}

// GuestMACFor returns the MAC that frames to the guest at ip go to: on a
// bridge, the source of the last frame from ip (none before one was
// seen); otherwise the container's.
func (g *guestAddr) GuestMACFor(ip netip.Addr) (tcpip.LinkAddress, bool) {
	if !g.bridged.Load() {
		return g.GuestMAC()
	}
	g.mu.RLock()
	mac, ok := g.byIP[ip.Unmap()]
	g.mu.RUnlock()
	return mac, ok
}

// FrameSource is the sender's address in an Ethernet frame's headers
// hdr: an IPv4 or IPv6 packet's source, or an ARP packet's sender, when
// it is a unicast address a guest may have (not unspecified, multicast,
// broadcast or loopback).
func FrameSource(hdr []byte) (netip.Addr, bool) {
	if len(hdr) < header.EthernetMinimumSize {
		return netip.Addr{}, false
	}
	l3 := hdr[header.EthernetMinimumSize:]
	var a netip.Addr
	switch header.Ethernet(hdr).Type() {
	case header.IPv4ProtocolNumber:
		if len(l3) < header.IPv4MinimumSize || l3[0]>>4 != 4 {
			return netip.Addr{}, false
		}
		a = netip.AddrFrom4([4]byte(l3[12:16]))
	case header.IPv6ProtocolNumber:
		if len(l3) < header.IPv6MinimumSize || l3[0]>>4 != 6 {
			return netip.Addr{}, false
		}
		a = netip.AddrFrom16([16]byte(l3[8:24]))
	case header.ARPProtocolNumber:
		arp := header.ARP(l3)
		if !arp.IsValid() {
			return netip.Addr{}, false
		}
		a = netip.AddrFrom4([4]byte(arp.ProtocolAddressSender()))
	default:
		return netip.Addr{}, false
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, false
	}
	return a, true
}

// firstView is the start of b without copying.
func firstView(b *buffer.Buffer) []byte {
	l := b.AsViewList()
	if v := l.Front(); v != nil {
		return v.AsSlice()
	}
	return nil
}

// Inject hands a copy of an Ethernet frame read earlier to the stack, as
// if it had just been read past the Interceptor (the fast path's held
// SYNs); after Close it is dropped.
func (e *Endpoint) Inject(frame []byte) {
	if e.closed.Load() {
		return
	}
	e.dispatch(buffer.MakeWithData(frame), e.queues[0].poll)
}

// dispatch hands an Ethernet frame to the stack, which takes it over;
// poll is the loop that runs the call (Inject's caller runs on none: the
// first queue's loop is told, harmlessly). The stack's dispatcher takes
// frames from several loops at once.
func (e *Endpoint) dispatch(frame buffer.Buffer, poll *eventloop.Loop) {
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d == nil {
		frame.Release()
		return
	}
	e.stats.RxFrames.Add(1)
	poll.HandOff() // the stack's goroutines take it on
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: frame})
	defer pkt.DecRef()
	if !e.ParseHeader(pkt) {
		e.stats.RxDropped.Add(1)
		return
	}
	d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
}

// isRouterSolicit spots an ICMPv6 router solicitation (no extension
// headers, as hosts send them).
func isRouterSolicit(frame []byte) bool {
	const icmpOff = header.EthernetMinimumSize + header.IPv6MinimumSize
	if len(frame) < icmpOff+header.ICMPv6MinimumSize || header.Ethernet(frame).Type() != header.IPv6ProtocolNumber {
		return false
	}
	ip := header.IPv6(frame[header.EthernetMinimumSize:])
	return ip.NextHeader() == uint8(header.ICMPv6ProtocolNumber) && header.ICMPv6(frame[icmpOff:]).Type() == header.ICMPv6RouterSolicit
}
