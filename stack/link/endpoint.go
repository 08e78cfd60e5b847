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
// (eventloop) that reads the TAP; Loops lends it to the fast path.
//
// A multi-queue TAP (IFF_MULTI_QUEUE, AddQueue) has an fd per queue, each
// read by a loop of its own. The kernel hands each flow of the container
// to one queue, the one that last wrote a frame of that flow
// (tun_automq_select_queue): the fast path writes a flow's frames on the
// queue it owns the flow from, so that the flow stays with one loop;
// the stack's own frames go to a queue by their flow's hash.
package link

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"github.com/rootlessnet/rootlessnet/tap"
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

	// queues are the TAP's queues, each an fd read by an event loop of
	// its own: one, unless AddQueue added those of a multi-queue TAP.
	queues []*queue
	// active is how many of them, from the first, are attached to the
	// TAP (SetActiveQueues): the others read nothing, and their writes
	// go on the first queue. qmu orders the changes.
	active atomic.Int32
	qmu    sync.Mutex

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	started    bool // set under qmu as well
	wg         sync.WaitGroup

	// onReadError is told why a read loop ended, unless Close ended it.
	onReadError func(error)
	// owns says which addresses the stack may claim in ARP replies and
	// neighbour advertisements.
	owns   ownsFunc
	closed atomic.Bool

	// icpt is offered every frame read before the stack (SetInterceptor).
	icpt Interceptor
	// onRouterSolicit is called (on a read loop: it must not block)
	// when the container asks for router advertisements.
	onRouterSolicit func()
	// synAcks carries the stack's SYN-ACKs to the writer goroutine.
	synAcks synAckQueue

	stats Stats
}

// queue is one of the TAP's queues: its fd, the event loop that reads it
// (and serves the fast path's host sockets of the flows it owns), and
// the reader's state between the loop's calls.
type queue struct {
	tap  tapFD
	poll *eventloop.Loop
	rx   tapReader
}

// newQueue takes over file as a queue numbered index of e.
func newQueue(e *Endpoint, file *os.File, index int) (*queue, error) {
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
	q := &queue{tap: tapFD{fd: fd}, poll: p}
	q.rx = tapReader{e: e, index: index, tap: &q.tap, poll: p}
	return q, nil
}

// Stats counts the endpoint's frames and what it dropped.
type Stats struct {
	RxFrames, TxFrames, RxDropped, TxErrors atomic.Uint64
}

// Interceptor is offered each frame read from the TAP before the stack,
// on the read loop of the queue q that read it (it must not block; with
// several queues, calls for different queues run at once). hdr is the
// frame's first bytes (up to its Ethernet, IP and TCP headers with
// options), rest what follows; both are the loop's buffers, valid only
// during the call. It reports whether it took the frame, which then never
// reaches the stack. While it holds frames of queue q to send as one
// (Holding: a flow's datagrams) that queue's loop reads on, up to rxBurst
// frames per wake-up; Flush(q) is called after each burst, so that what
// it holds leaves before the loop waits again.
//
// udpSeg is not 0 for a UDP super-frame (USO): its payload is datagrams of
// udpSeg bytes each, the last possibly shorter (see SplitUDP).
type Interceptor interface {
	Intercept(q int, hdr, rest []byte, udpSeg int) bool
	Holding(q int) bool
	Flush(q int)
}

var _ stack.LinkEndpoint = (*Endpoint)(nil)

// New takes over a TAP fd: file is closed at once, its fd kept in a
// duplicate that Close closes. onReadError and owns may be nil.
func New(file *os.File, mtu uint32, mac tcpip.LinkAddress, onReadError func(error), owns func(tcpip.Address) bool) (*Endpoint, error) {
	e := &Endpoint{onReadError: onReadError, owns: owns, synAcks: newSynAckQueue()}
	q, err := newQueue(e, file, 0)
	if err != nil {
		return nil, err
	}
	e.queues = []*queue{q}
	e.active.Store(1)
	e.mac = mac
	e.mtu.Store(mtu)
	return e, nil
}

// AddQueue takes over another queue of the same multi-queue TAP
// (IFF_MULTI_QUEUE), as New takes the first: it gets an event loop of
// its own, and frames read from it are offered to the Interceptor with
// its number (Queues()-1 once added). Call it before the NIC is created.
func (e *Endpoint) AddQueue(file *os.File) error {
	q, err := newQueue(e, file, len(e.queues))
	if err != nil {
		return err
	}
	e.queues = append(e.queues, q)
	e.active.Store(int32(len(e.queues)))
	return nil
}

// Queues is the number of the TAP's queues.
func (e *Endpoint) Queues() int { return len(e.queues) }

// ActiveQueues is the number of queues attached to the TAP, the first
// ones (see SetActiveQueues).
func (e *Endpoint) ActiveQueues() int { return int(e.active.Load()) }

// SetActiveQueues keeps the first n queues attached to the TAP and
// detaches the others (tap.SetQueueAttached), which the kernel then no
// longer steers frames to: with one queue attached it hashes no frame.
// A detached queue's loop goes on serving its host sockets; its frames
// to the container go on the first queue. Frames the kernel had queued
// on a queue it detaches are lost (the kernel purges them), so callers
// change this seldom.
func (e *Endpoint) SetActiveQueues(n int) error {
	if n < 1 || n > len(e.queues) {
		return fmt.Errorf("%d active TAP queues: want 1 to %d", n, len(e.queues))
	}
	e.qmu.Lock()
	defer e.qmu.Unlock()
	started := e.started // Attach sets it under qmu too
	cur := int(e.active.Load())
	// Fewer: writes leave the queues first, then their reads.
	if n < cur {
		e.active.Store(int32(n))
	}
	for i := n; i < cur; i++ {
		q := e.queues[i]
		if started {
			q.poll.Remove(q.tap.fd)
		}
		if err := tap.SetQueueAttachedFD(q.tap.fd, false); err != nil {
			return err
		}
	}
	// More: attached and read before frames are written on them.
	for i := cur; i < n; i++ {
		q := e.queues[i]
		if err := tap.SetQueueAttachedFD(q.tap.fd, true); err != nil {
			e.active.Store(int32(i))
			return err
		}
		if started {
			if err := q.poll.Add(q.tap.fd, eventloop.Level, &q.rx); err != nil {
				tap.SetQueueAttachedFD(q.tap.fd, false)
				e.active.Store(int32(i))
				return err
			}
		}
		e.active.Store(int32(i + 1))
	}
	return nil
}

// OnRouterSolicit sets the function told of router solicitations from
// the container: gVisor is no router and would ignore them. Call it
// before the NIC is created.
func (e *Endpoint) OnRouterSolicit(fn func()) { e.onRouterSolicit = fn }

// SetInterceptor sets who is offered each inbound frame before the
// stack. Call it before the NIC is created.
func (e *Endpoint) SetInterceptor(i Interceptor) { e.icpt = i }

// Loop is the event loop that reads the TAP's first queue.
func (e *Endpoint) Loop() *eventloop.Loop { return e.queues[0].poll }

// Loops are the event loops of the TAP's queues, in order: the fast
// path's host sockets and deadlines join them. Attach starts them and
// Close stops them.
func (e *Endpoint) Loops() []*eventloop.Loop {
	loops := make([]*eventloop.Loop, len(e.queues))
	for i, q := range e.queues {
		loops[i] = q.poll
	}
	return loops
}

// Attach implements stack.LinkEndpoint: the read loop starts with the
// first dispatcher.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if d != nil && !e.started {
		e.qmu.Lock()
		defer e.qmu.Unlock()
		e.started = true
		for i, q := range e.queues {
			// The loop waits in Go's poller unless the fast path
			// asked for its own waits (eventloop.Loop.SetViaGo).
			// A detached queue's loop runs for its host sockets.
			if i < e.ActiveQueues() {
				if err := q.poll.Add(q.tap.fd, eventloop.Level, &q.rx); err != nil {
					// Only a closed endpoint or a broken epoll gets here.
					if !e.closed.Load() && e.onReadError != nil {
						e.onReadError(err)
					}
				}
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				q.poll.Run()
			}()
		}
		e.wg.Add(1)
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

// Close ends the read loops and then the TAP's fds; the fast path's
// connections are its own to close (fastpath.Path.Close). It must not
// run on a read loop.
func (e *Endpoint) Close() {
	if e.closed.CompareAndSwap(false, true) {
		e.synAcks.close()
		e.mu.RLock()
		started := e.started
		e.mu.RUnlock()
		if started {
			for _, q := range e.queues {
				q.poll.Stop()
			}
		}
		for _, q := range e.queues {
			q.rx.release()
			q.tap.close()
			q.poll.Close()
		}
	}
}
