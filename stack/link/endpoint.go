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
// and out, one read or writev per frame. It composes the TAP fd (tap.go),
// its read loop (tapReader, rx.go), the stack's writes (tx.go), the
// Ethernet and offload answers gVisor asks for (ethernet, offload), and
// keeps the link's life: attach, dispatch to the stack, close.
//
// It replaces gVisor's fdbased, whose readv dispatcher in this snapshot
// stops for good on the first frame addressed to another MAC.
type Endpoint struct {
	ethernet
	offload
	guestAddr

	tap tapFD
	// poll waits for the TAP (and the fast path's host sockets).
	poll *eventloop.Loop

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	started    bool
	wg         sync.WaitGroup

	// onReadError is told why the read loop ended, unless Close ended it.
	onReadError func(error)
	// owns says which addresses the stack may claim in ARP replies and
	// neighbour advertisements.
	owns   ownsFunc
	closed atomic.Bool

	// rx is the read loop's state between the loop's calls.
	rx tapReader
	// synAcks carries the stack's SYN-ACKs to the writer goroutine.
	synAcks synAckQueue

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
// While it holds frames to send as one (Holding: a flow's datagrams) the
// loop reads on, up to rxBurst frames per wake-up; Flush is called after
// each burst, so that what it holds leaves before the loop waits again.
//
// udpSeg is not 0 for a UDP super-frame (USO): its payload is datagrams of
// udpSeg bytes each, the last possibly shorter (see SplitUDP).
type Interceptor interface {
	Intercept(hdr, rest []byte, udpSeg int) bool
	Holding() bool
	Flush()
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
	e := &Endpoint{tap: tapFD{fd: fd}, poll: p, onReadError: onReadError, owns: owns,
		synAcks: newSynAckQueue()}
	e.mac = mac
	e.mtu.Store(mtu)
	e.rx.e = e
	return e, nil
}

// OnRouterSolicit sets the function told of router solicitations from
// the container: gVisor is no router and would ignore them. Call it
// before the NIC is created.
func (e *Endpoint) OnRouterSolicit(fn func()) { e.rx.onRouterSolicit = fn }

// SetInterceptor sets who is offered each inbound frame before the
// stack. Call it before the NIC is created.
func (e *Endpoint) SetInterceptor(i Interceptor) { e.rx.icpt = i }

// Loop is the event loop that reads the TAP: the fast path's host
// sockets and deadlines join it. Attach starts it and Close stops it.
func (e *Endpoint) Loop() *eventloop.Loop { return e.poll }

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
		if err := e.poll.Add(e.tap.fd, eventloop.Level, &e.rx); err != nil {
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
		go func() {
			defer e.wg.Done()
			e.synAcks.run(e.writePacket)
		}()
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
		e.synAcks.close()
		e.mu.RLock()
		started := e.started
		e.mu.RUnlock()
		if started {
			e.poll.Stop()
		}
		e.rx.release()
		e.tap.close()
		e.poll.Close()
	}
}
