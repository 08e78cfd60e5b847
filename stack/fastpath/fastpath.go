// Package fastpath carries the container's traffic past the gVisor
// netstack, on the TAP's read loop: outbound and published TCP
// connections as flows of its own (tcp.go; a tcpFlow, in flow.go and
// close.go, composed of its handshake in connect.go and dial.go, its
// sendSide in send.go and sendbuf.go, its recvSide in receive.go and
// pending.go and its flowTimers in timers.go; the segment codec in
// seg.go), UDP flows once the forwarder has set them up (udp.go), and
// SYNs held until gVisor has let go of their 4-tuple (synhold.go).
//
// Its edges: the link offers it every inbound frame first (Path is a
// link.Interceptor); it writes frames through Link, which link.Endpoint
// implements, and never sees the endpoint otherwise; its host sockets
// and deadlines are served by the link's event loop (eventloop.Loop). The
// forwarder gives it a TCPPolicy and uses AddUDPFlow and WriteUDP; port
// forwarding uses DialTCP.
//
// A multi-queue TAP has a loop per queue (link.Endpoint.AddQueue). Each
// loop runs the fast path for the frames its queue reads, at the same
// time as the others: what one loop keeps between frames is its queue's
// (rxQueue); a TCP flow belongs to the queue that read its SYN (or, for a
// published one, to a queue picked in turn) and writes its frames there,
// which makes the kernel steer the flow's frames from the container to
// that queue, so its host socket and its segments meet on one loop; a
// segment that comes in on another queue all the same is applied there,
// under the flow's lock. A UDP flow's sink takes its datagrams from one
// loop at a time.
package fastpath

import (
	"hash/maphash"
	"net/netip"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"github.com/rootlessnet/rootlessnet/stack/link"
)

// Link is what the fast path needs of the TAP link endpoint.
type Link interface {
	// LinkAddress is the gateway's MAC, fixed for the link's life.
	LinkAddress() tcpip.LinkAddress
	MTU() uint32
	// VnetHdr says whether frames carry a virtio-net header; USO
	// whether the TAP also takes UDP segmentation offload (frames of
	// GSO type VnetGSOUDPL4 both ways).
	VnetHdr() bool
	USO() bool
	// GuestMAC is the container's MAC, once a frame from it was seen;
	// GuestMACFor the MAC of the guest at an address (on a bridge, each
	// guest's own). LearnGuest tells the link of a frame the fast path
	// took, by its first bytes.
	GuestMAC() (tcpip.LinkAddress, bool)
	GuestMACFor(netip.Addr) (tcpip.LinkAddress, bool)
	LearnGuest(hdr []byte)
	// WritePieces writes one frame on queue q, its virtio-net header
	// first when VnetHdr; a full TAP drops it.
	WritePieces(q int, pieces [][]byte) error
	// ActiveQueues is how many of the queues, from the first, are
	// attached to the TAP now; a write on another goes on the first.
	ActiveQueues() int
	// Inject hands a frame to the stack as if just read (a held SYN).
	Inject(frame []byte)
}

var (
	_ Link             = (*link.Endpoint)(nil)
	_ link.Interceptor = (*Path)(nil)
)

// Path is the fast path of one link: a part per concern (udp.go,
// tcp.go, synhold.go), each with the link's side they share (core).
type Path struct {
	core
	udp udpShortcut
	tcp tcpTable
	syn synHold
}

// core is what the parts of the fast path share.
type core struct {
	link Link
	// queues are the TAP's queues, each with its loop (one, unless the
	// TAP has several).
	queues []*rxQueue
	// mac is the link's MAC, compared as bytes with every frame's
	// destination.
	mac    tcpip.LinkAddress
	closed atomic.Bool
	// ipID numbers the IPv4 packets WriteUDP and the TCP flows make.
	ipID  atomic.Uint32
	stats Stats
}

// Stats counts what the fast path carried.
type Stats struct {
	// SYNHeld counts SYNs held until their 4-tuple was free (synhold.go).
	SYNHeld atomic.Uint64
	// UDPShortcutIn counts datagrams handed to a flow's sink past the
	// stack, UDPShortcutOut those written to the container by WriteUDP
	// (udp.go).
	UDPShortcutIn, UDPShortcutOut atomic.Uint64
	// TCPFlows counts connections the TCP fast path took on.
	TCPFlows atomic.Uint64
}

// rxQueue is what one TAP queue's loop keeps between the frames it
// reads: only that loop touches it, but loop.
type rxQueue struct {
	loop *eventloop.Loop
	// last is the TCP flow of the last segment, which the next one most
	// likely has too: a key compare instead of hashing two AddrPorts.
	last *tcpFlow
	// udpIovs is scratch for a datagram's pieces.
	udpIovs [][]byte
	// dirty are the UDP flows given a datagram since the last Flush.
	dirty []*udpFlow
	// The next queue's state on a cache line of its own: loops run on
	// different CPUs.
	_ [64]byte
}

// New makes the fast path of l, whose host sockets and deadlines loops
// serve: one per queue of the TAP, in the queues' order
// (link.Endpoint.Loops). It takes nothing until the link is told of it
// (link.Endpoint.SetInterceptor) and it is given work (EnableTCP,
// AddUDPFlow, SetSYNBusy).
func New(l Link, loops ...*eventloop.Loop) *Path {
	if len(loops) == 0 {
		panic("fastpath.New: no event loop")
	}
	p := &Path{core: core{link: l, mac: l.LinkAddress()}}
	for _, loop := range loops {
		p.queues = append(p.queues, &rxQueue{loop: loop})
	}
	p.udp.core = &p.core
	p.udp.seed = maphash.MakeSeed()
	p.tcp.core = &p.core
	p.syn.core = &p.core
	return p
}

// multiQueue says whether frames come from several loops at once.
func (c *core) multiQueue() bool { return len(c.queues) > 1 }

// Intercept implements link.Interceptor: a datagram of a registered UDP
// flow goes to its sink, a segment of a TCP flow to the flow (a SYN the
// policy takes starts one, owned by queue q), and a SYN whose 4-tuple the
// stack still holds waits; everything else goes on to the stack.
func (p *Path) Intercept(q int, hdr, rest []byte, udpSeg int) bool {
	rq := p.queues[q]
	if p.udp.n.Load() > 0 && p.udp.intercept(rq, hdr, rest, udpSeg) {
		return true
	}
	if udpSeg > 0 {
		return false
	}
	if p.tcp.policy != nil && p.tcp.intercept(q, hdr, rest) {
		return true
	}
	return p.syn.hold(hdr, rest)
}

// Holding implements link.Interceptor: datagrams read from queue q wait
// to be sent as one.
func (p *Path) Holding(q int) bool { return len(p.queues[q].dirty) > 0 }

// Flush implements link.Interceptor: queue q's loop has read what the
// queue had.
func (p *Path) Flush(q int) {
	if rq := p.queues[q]; len(rq.dirty) > 0 {
		p.udp.flush(rq)
	}
}

// Close ends every TCP flow (their host sockets close) and drops the
// held SYNs. Call it after the link's Close, which stops the loop: flows
// have no goroutines of their own.
func (p *Path) Close() {
	p.closed.Store(true)
	p.tcp.close()
}

// Stats returns the fast path's counters.
func (p *Path) Stats() *Stats { return &p.stats }

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
