package stack

import (
	"errors"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// maxFrame is the largest read from a TAP: a 64 KiB IP packet plus the
// Ethernet and virtio-net headers.
const maxFrame = VnetHdrSize + header.EthernetMinimumSize + 65535

// TapEndpoint is a gVisor link endpoint on a TAP fd: Ethernet frames in
// and out, one read or writev per frame.
//
// It replaces gVisor's fdbased, whose readv dispatcher in this snapshot
// stops for good on the first frame addressed to another MAC.
type TapEndpoint struct {
	// fd is the TAP, out of Go's poller; fdMu is held shared by each
	// write and taken by Close to close fd, so no write meets a reused
	// number.
	fd   int
	fdMu sync.RWMutex
	// poll waits for the TAP and the fast path's host sockets.
	poll *eventloop.Loop
	mac  tcpip.LinkAddress

	mtu atomic.Uint32
	// guestMAC is the source of the last unicast frame from the
	// container: where frames that bypass the stack are sent.
	guestMAC atomic.Pointer[tcpip.LinkAddress]

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	started    bool
	wg         sync.WaitGroup

	// onReadError is told why the read loop ended, unless Close ended it.
	onReadError func(error)
	// owns says which addresses the stack may claim in ARP replies and
	// neighbour advertisements.
	owns func(tcpip.Address) bool
	// onRouterSolicit is called (on the read loop: it must not block)
	// when the container asks for router advertisements.
	onRouterSolicit func()
	// vnet: every frame carries a virtio-net header (IFF_VNET_HDR), and
	// TCP goes both ways as 64 KiB super-frames.
	vnet   bool
	closed atomic.Bool
	// synBusy and synHeld: see synhold.go.
	synBusy atomic.Pointer[SYNBusy]
	synHeld atomic.Int32

	// txq carries outbound packets to the writer goroutine, so that no
	// stack goroutine makes the TAP syscall while it holds an endpoint
	// lock (see WritePackets). done ends the writer.
	txq      chan *stack.PacketBuffer
	done     chan struct{}
	doneOnce sync.Once

	// udp carries registered UDP flows past the stack (udpshortcut.go).
	udp udpShortcut
	// rx is the read loop's state between the poller's calls.
	rx tapRx
	// tcpf carries outbound TCP connections past the stack (tcpfast.go).
	tcpf tcpFastPath
	// ipID numbers the IPv4 packets WriteUDP and the TCP fast path make.
	ipID atomic.Uint32

	stats LinkStats
}

// LinkStats counts what the endpoint dropped.
type LinkStats struct {
	RxFrames, TxFrames, RxDropped, TxErrors atomic.Uint64
	// SYNHeld counts SYNs held until their 4-tuple was free (synhold.go).
	SYNHeld atomic.Uint64
	// UDPShortcutIn counts datagrams handed to a flow's sink past the
	// stack, UDPShortcutOut those written to the container by WriteUDP
	// (udpshortcut.go).
	UDPShortcutIn, UDPShortcutOut atomic.Uint64
	// TCPFastFlows counts connections the TCP fast path took on.
	TCPFastFlows atomic.Uint64
}

var _ stack.LinkEndpoint = (*TapEndpoint)(nil)

// NewTapEndpoint takes over a TAP fd: file is closed at once, its fd
// kept in a duplicate that Close closes. onReadError and owns may be nil.
func NewTapEndpoint(file *os.File, mtu uint32, mac tcpip.LinkAddress, onReadError func(error), owns func(tcpip.Address) bool) (*TapEndpoint, error) {
	fd, err := eventloop.DetachFD(file)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	p, err := eventloop.New()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	e := &TapEndpoint{fd: fd, poll: p, mac: mac, onReadError: onReadError, owns: owns,
		txq: make(chan *stack.PacketBuffer, txQueueLen), done: make(chan struct{})}
	e.mtu.Store(mtu)
	return e, nil
}

// OnRouterSolicit sets the function told of router solicitations from
// the container: gVisor is no router and would ignore them. Call it
// before the NIC is created.
func (e *TapEndpoint) OnRouterSolicit(fn func()) { e.onRouterSolicit = fn }

// SetBusyPoll sets the longest busy-poll window of the fast path's loop
// (busypoll.go); 0 turns busy polling off. Call it before the NIC is
// created.
func (e *TapEndpoint) SetBusyPoll(d time.Duration) { e.poll.SetBusyPoll(d) }

// EnableVnetHdr declares that the TAP was opened with IFF_VNET_HDR and
// offloads set (tap.SetOffload). Call it before the NIC is created.
func (e *TapEndpoint) EnableVnetHdr() { e.vnet = true }

// GSOMaxSize implements stack.GSOEndpoint.
func (e *TapEndpoint) GSOMaxSize() uint32 {
	if e.vnet {
		return gsoMaxSize
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint: with virtio-net headers the
// kernel segments and checksums what the stack sends.
func (e *TapEndpoint) SupportedGSO() stack.SupportedGSO {
	if e.vnet {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// MTU implements stack.LinkEndpoint.
func (e *TapEndpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (e *TapEndpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *TapEndpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (e *TapEndpoint) LinkAddress() tcpip.LinkAddress { return e.mac }

// SetLinkAddress implements stack.LinkEndpoint; the gateway MAC is fixed.
func (e *TapEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. The kernel checksums what it
// hands a TAP without virtio headers, so received checksums need no check.
func (e *TapEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload | stack.CapabilityResolutionRequired
}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *TapEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// Attach implements stack.LinkEndpoint: the read loop starts with the
// first dispatcher.
func (e *TapEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if d != nil && !e.started {
		e.started = true
		// Without the fast path, frames go to the netstack's goroutines:
		// the loop waits in Go's poller (runViaGo). So it does with one
		// P, which its own waits would keep from Go's poller and the
		// rest of the program.
		e.poll.SetViaGo(e.tcpf.policy == nil || runtime.GOMAXPROCS(0) < 2)
		if err := e.poll.Add(e.fd, eventloop.Level, e); err != nil {
			// Only a closed endpoint or a broken epoll gets here.
			if !e.closed.Load() && e.onReadError != nil {
				e.onReadError(err)
			}
		}
		e.wg.Add(2)
		go func() {
			defer e.wg.Done()
			e.poll.Run()
		}()
		go e.writeLoop()
	}
}

// IsAttached implements stack.LinkEndpoint.
func (e *TapEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint.
func (e *TapEndpoint) Wait() { e.wg.Wait() }

// Close ends the read loop, the TCP fast path's connections and then
// the TAP fd. It must not run on the read loop.
func (e *TapEndpoint) Close() {
	if e.closed.CompareAndSwap(false, true) {
		e.doneOnce.Do(func() { close(e.done) })
		e.mu.RLock()
		started := e.started
		e.mu.RUnlock()
		if started {
			e.poll.Stop()
		}
		e.closeTCPFast()
		e.rx.release()
		e.fdMu.Lock()
		unix.Close(e.fd)
		e.fd = -1
		e.fdMu.Unlock()
		e.poll.Close()
	}
}

// AddHeader implements stack.LinkEndpoint.
func (e *TapEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *TapEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(hdr).Type()
	return true
}

// txQueueLen bounds the SYN-ACKs waiting for the writer goroutine.
const txQueueLen = 256

// WritePackets implements stack.LinkWriter. Packets are written inline
// (a hand-off to another goroutine costs tens of µs of latency), except
// SYN-ACKs: gVisor's forwarder sends those while holding the new
// endpoint's lock, and the container's ACK and first data, arriving while
// that TAP write is still in the kernel, made the TCP processor goroutines
// spin on that lock (78% of the CPU under a new-connection load, about
// 1 ms per connection).
func (e *TapEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if e.isForeignClaim(pkt) {
			n++
			continue
		}
		if isSynAck(pkt) {
			pkt.IncRef()
			select {
			case e.txq <- pkt:
				n++
				continue
			case <-e.done:
				pkt.DecRef()
				return n, &tcpip.ErrClosedForSend{}
			}
		}
		if err := e.writePacket(pkt); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return n, &tcpip.ErrClosedForSend{}
			}
			// A full TAP queue drops the frame, as a NIC would.
			continue
		}
		n++
	}
	return n, nil
}

// isSynAck spots a TCP SYN-ACK made by the stack.
func isSynAck(pkt *stack.PacketBuffer) bool {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	t := header.TCP(pkt.TransportHeader().Slice())
	const synAck = header.TCPFlagSyn | header.TCPFlagAck
	return len(t) >= header.TCPMinimumSize && t.Flags()&synAck == synAck
}

// writeLoop writes the queued SYN-ACKs until Close.
func (e *TapEndpoint) writeLoop() {
	defer e.wg.Done()
	for {
		select {
		case pkt := <-e.txq:
			e.writePacket(pkt)
			pkt.DecRef()
		case <-e.done:
			for {
				select {
				case pkt := <-e.txq:
					pkt.DecRef()
				default:
					return
				}
			}
		}
	}
}

// writePacket writes one packet to the TAP.
func (e *TapEndpoint) writePacket(pkt *stack.PacketBuffer) error {
	iovs := pkt.AsSlices()
	if e.vnet {
		var hdr [VnetHdrSize]byte
		h := vnetHdrFor(pkt)
		h.encode(hdr[:])
		iovs = append([][]byte{hdr[:]}, iovs...)
	}
	if err := e.writev(iovs); err != nil {
		e.stats.TxErrors.Add(1)
		return err
	}
	e.stats.TxFrames.Add(1)
	return nil
}

// isForeignClaim reports an ARP reply or neighbour advertisement for an
// address the stack does not own. With spoofing and promiscuous mode on,
// gVisor may claim any address (its neighbour code checks targets with
// temporary addresses allowed; for ARP this answered the container's own
// conflict probes); only the gateway, DNS and link-local addresses are
// really here.
func (e *TapEndpoint) isForeignClaim(pkt *stack.PacketBuffer) bool {
	if e.owns == nil {
		return false
	}
	switch pkt.NetworkProtocolNumber {
	case header.ARPProtocolNumber:
		arp := header.ARP(pkt.NetworkHeader().Slice())
		if !arp.IsValid() || arp.Op() != header.ARPReply {
			return false
		}
		return !e.owns(tcpip.AddrFrom4Slice(arp.ProtocolAddressSender()))
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(pkt.NetworkHeader().Slice())
		if len(ip) < header.IPv6MinimumSize || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
			return false
		}
		icmp := header.ICMPv6(pkt.TransportHeader().Slice())
		if len(icmp) == 0 {
			icmp = pkt.Data().AsRange().ToSlice()
		}
		if len(icmp) < header.ICMPv6NeighborAdvertMinimumSize || icmp.Type() != header.ICMPv6NeighborAdvert {
			return false
		}
		na := header.NDPNeighborAdvert(icmp.MessageBody())
		return !e.owns(na.TargetAddress())
	}
	return false
}

// WriteFrame sends one whole Ethernet frame to the container, bypassing
// the stack (ICMP errors and echo replies built by the forwarder).
func (e *TapEndpoint) WriteFrame(frame []byte) error {
	if e.vnet {
		var none [VnetHdrSize]byte
		return e.writev([][]byte{none[:], frame})
	}
	return e.writev([][]byte{frame})
}

// GuestMAC returns the container's MAC once a frame from it was seen.
func (e *TapEndpoint) GuestMAC() (tcpip.LinkAddress, bool) {
	p := e.guestMAC.Load()
	if p == nil {
		return "", false
	}
	return *p, true
}

// Stats returns the endpoint's counters.
func (e *TapEndpoint) Stats() *LinkStats { return &e.stats }

// writev writes one frame, or fails at once with EAGAIN when the TAP
// cannot take it: the frame is then dropped, as a NIC drops on a full
// queue. Waiting instead would stall the stack's writer, and with it every
// flow, behind a container that does not read; TCP retransmits what is
// lost.
func (e *TapEndpoint) writev(iovs [][]byte) error {
	e.fdMu.RLock()
	defer e.fdMu.RUnlock()
	if e.fd < 0 {
		return os.ErrClosed
	}
	for {
		_, err := eventloop.Writev(e.fd, iovs)
		if err != unix.EINTR {
			return err // EAGAIN too: never wait for writability
		}
	}
}

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
const _ = uint(rxHdrSize + rxHeadSize - (maxFrame - VnetHdrSize))

// tapRx is what the read loop keeps between the poller's calls: the
// 64 KiB chunk the next frame's payload goes to, and the buffer its
// headers go to. A frame becomes gVisor buffers only when the stack
// takes it: the fast paths take most, and a view per frame was a pool
// round trip and a clear each.
type tapRx struct {
	head   *buffer.View
	hdr    [rxHdrSize]byte
	vhdr   [VnetHdrSize]byte
	iovs   [][]byte
	failed bool
}

func (r *tapRx) release() {
	if r.head != nil {
		r.head.Release()
		r.head = nil
	}
}

// onPoll is the TAP's handler on the poller: one frame per call, the
// TAP being level-triggered.
func (e *TapEndpoint) OnPoll(uint32) {
	if !e.rx.failed {
		e.readFrame(&e.rx)
	}
}

// readFrame reads and delivers one frame, if the TAP has one.
func (e *TapEndpoint) readFrame(r *tapRx) {
	if r.head == nil {
		r.head = buffer.NewViewSize(rxHeadSize)
	}
	iovs := r.iovs[:0]
	if e.vnet {
		iovs = append(iovs, r.vhdr[:])
	}
	iovs = append(iovs, r.hdr[:], r.head.AsSlice())
	r.iovs = iovs
	n, err := eventloop.Readv(e.fd, iovs)
	for err == unix.EINTR {
		n, err = eventloop.Readv(e.fd, iovs)
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		if err == unix.EAGAIN {
			return
		}
		r.failed = true
		e.poll.Remove(e.fd)
		if !e.closed.Load() && e.onReadError != nil {
			e.onReadError(err)
			e.poll.HandOff()
		}
		return
	}
	if e.vnet {
		// Checksums may be partial (the kernel leaves them to the
		// receiver: RX checksum offload covers that) and TCP may
		// come as one super-frame, which the stack takes whole.
		if n < VnetHdrSize {
			e.stats.RxDropped.Add(1)
			return
		}
		n -= VnetHdrSize
	}
	hdr, rest := r.hdr[:], []byte(nil)
	if n > rxHdrSize {
		rest = r.head.AsSlice()[:n-rxHdrSize]
	} else {
		hdr = hdr[:n]
	}
	if udp, tcp := e.udp.n.Load() > 0, e.tcpf.policy != nil; udp || tcp {
		if udp && e.deliverUDP(hdr, rest) || tcp && e.deliverTCP(hdr, rest) {
			return
		}
	}
	frame := buffer.MakeWithView(buffer.NewViewWithData(hdr))
	if n <= rxHdrSize {
		e.deliver(frame)
		return
	}
	if n < rxCopyBelow {
		frame.Append(buffer.NewViewWithData(rest))
	} else {
		r.head.CapLength(len(rest))
		frame.Append(r.head)
		r.head = nil
	}
	e.deliver(frame)
}

// deliver hands one frame to the stack, which takes it over. Frames for
// other unicast MACs are dropped here: the container may still talk to a
// neighbour it knew.
func (e *TapEndpoint) deliver(frame buffer.Buffer) {
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
	e.learnGuestMAC(eth.SourceAddress())
	if e.onRouterSolicit != nil && isRouterSolicit(hdr) {
		e.onRouterSolicit()
		e.poll.HandOff()
	}
	if e.holdSYN(hdr, &frame) {
		frame.Release()
		return
	}
	e.dispatch(frame)
}

// learnGuestMAC remembers src, a frame's source, as the container's MAC.
func (e *TapEndpoint) learnGuestMAC(src tcpip.LinkAddress) {
	if header.IsValidUnicastEthernetAddress(src) {
		if p := e.guestMAC.Load(); p == nil || *p != src {
			e.guestMAC.Store(&src)
		}
	}
}

// framePieces appends to dst the pieces of bytes [off, off+n) of a frame
// read as hdr then rest.
func framePieces(dst [][]byte, hdr, rest []byte, off, n int) [][]byte {
	for _, b := range [2][]byte{hdr, rest} {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > n {
			b = b[:n]
		}
		if len(b) > 0 {
			dst = append(dst, b)
		}
		n -= len(b)
	}
	return dst
}

// firstView is the start of b without copying.
func firstView(b *buffer.Buffer) []byte {
	l := b.AsViewList()
	if v := l.Front(); v != nil {
		return v.AsSlice()
	}
	return nil
}

// dispatch hands an Ethernet frame to the stack, which takes it over.
func (e *TapEndpoint) dispatch(frame buffer.Buffer) {
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d == nil {
		frame.Release()
		return
	}
	e.stats.RxFrames.Add(1)
	e.poll.HandOff() // the stack's goroutines take it on
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: frame})
	defer pkt.DecRef()
	if !e.ParseHeader(pkt) {
		e.stats.RxDropped.Add(1)
		return
	}
	d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
}

// SetOnCloseAction implements stack.LinkEndpoint; the TAP needs no action.
func (e *TapEndpoint) SetOnCloseAction(func()) {}

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
