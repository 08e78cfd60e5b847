// Package link is the TAP link endpoint: Ethernet frames in and out of
// the TAP fd (one read or writev per frame), the virtio-net header and
// its offloads, and gVisor's stack.LinkEndpoint on top (a pcap sniffer
// wraps it as any gVisor link).
//
// Frames flow one way: each frame read from the TAP is offered first to
// the Interceptor (the fast path, which may take it), then to the stack.
// The other way, the stack writes through WritePackets and anyone else
// (the fast path, router advertisements, ICMP made by the forwarder)
// through WritePieces or WriteFrame. The endpoint runs the event loop
// (eventloop) that reads the TAP; Loop lends it to the fast path.
package link

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// MaxFrame is the largest read from a TAP: a 64 KiB IP packet plus the
// Ethernet and virtio-net headers.
const MaxFrame = VnetHdrSize + header.EthernetMinimumSize + 65535

// Endpoint is a gVisor link endpoint on a TAP fd: Ethernet frames in
// and out, one read or writev per frame.
//
// It replaces gVisor's fdbased, whose readv dispatcher in this snapshot
// stops for good on the first frame addressed to another MAC.
type Endpoint struct {
	// fd is the TAP, out of Go's poller; fdMu is held shared by each
	// write and taken by Close to close fd, so no write meets a reused
	// number.
	fd   int
	fdMu sync.RWMutex
	// poll waits for the TAP (and the fast path's host sockets).
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
	// icpt is offered every frame read before the stack (SetInterceptor).
	icpt Interceptor

	// txq carries outbound packets to the writer goroutine, so that no
	// stack goroutine makes the TAP syscall while it holds an endpoint
	// lock (see WritePackets). done ends the writer.
	txq      chan *stack.PacketBuffer
	done     chan struct{}
	doneOnce sync.Once

	// rx is the read loop's state between the loop's calls.
	rx tapRx

	stats Stats
}

// Stats counts the endpoint's frames and what it dropped.
type Stats struct {
	RxFrames, TxFrames, RxDropped, TxErrors atomic.Uint64
}

// Interceptor is offered each frame read from the TAP before the stack,
// on the read loop (it must not block). hdr is the frame's first bytes
// (up to its Ethernet, IP and TCP headers with options), rest what
// follows; both are the loop's buffers, valid only during the call. It
// reports whether it took the frame, which then never reaches the stack.
type Interceptor interface {
	Intercept(hdr, rest []byte) bool
}

var _ stack.LinkEndpoint = (*Endpoint)(nil)

// New takes over a TAP fd: file is closed at once, its fd kept in a
// duplicate that Close closes. onReadError and owns may be nil.
func New(file *os.File, mtu uint32, mac tcpip.LinkAddress, onReadError func(error), owns func(tcpip.Address) bool) (*Endpoint, error) {
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
	e := &Endpoint{fd: fd, poll: p, mac: mac, onReadError: onReadError, owns: owns,
		txq: make(chan *stack.PacketBuffer, txQueueLen), done: make(chan struct{})}
	e.mtu.Store(mtu)
	return e, nil
}

// OnRouterSolicit sets the function told of router solicitations from
// the container: gVisor is no router and would ignore them. Call it
// before the NIC is created.
func (e *Endpoint) OnRouterSolicit(fn func()) { e.onRouterSolicit = fn }

// SetInterceptor sets who is offered each inbound frame before the
// stack. Call it before the NIC is created.
func (e *Endpoint) SetInterceptor(i Interceptor) { e.icpt = i }

// Loop is the event loop that reads the TAP: the fast path's host
// sockets and deadlines join it. Attach starts it and Close stops it.
func (e *Endpoint) Loop() *eventloop.Loop { return e.poll }

// EnableVnetHdr declares that the TAP was opened with IFF_VNET_HDR and
// offloads set (tap.SetOffload). Call it before the NIC is created.
func (e *Endpoint) EnableVnetHdr() { e.vnet = true }

// VnetHdr says whether every frame carries a virtio-net header.
func (e *Endpoint) VnetHdr() bool { return e.vnet }

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 {
	if e.vnet {
		return gsoMaxSize
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint: with virtio-net headers the
// kernel segments and checksums what the stack sends.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if e.vnet {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// MTU implements stack.LinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (e *Endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *Endpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress { return e.mac }

// SetLinkAddress implements stack.LinkEndpoint; the gateway MAC is fixed.
func (e *Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. The kernel checksums what it
// hands a TAP without virtio headers, so received checksums need no check.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload | stack.CapabilityResolutionRequired
}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// Attach implements stack.LinkEndpoint: the read loop starts with the
// first dispatcher.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if d != nil && !e.started {
		e.started = true
		// The loop waits in Go's poller unless the fast path asked
		// for its own waits (eventloop.Loop.SetViaGo).
		if err := e.poll.Add(e.fd, eventloop.Level, (*tapHandler)(e)); err != nil {
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
func (e *Endpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint.
func (e *Endpoint) Wait() { e.wg.Wait() }

// Close ends the read loop and then the TAP fd; the fast path's
// connections are its own to close (fastpath.Path.Close). It must not
// run on the read loop.
func (e *Endpoint) Close() {
	if e.closed.CompareAndSwap(false, true) {
		e.doneOnce.Do(func() { close(e.done) })
		e.mu.RLock()
		started := e.started
		e.mu.RUnlock()
		if started {
			e.poll.Stop()
		}
		e.rx.release()
		e.fdMu.Lock()
		unix.Close(e.fd)
		e.fd = -1
		e.fdMu.Unlock()
		e.poll.Close()
	}
}

// AddHeader implements stack.LinkEndpoint.
func (e *Endpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *Endpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(hdr).Type()
	return true
}
