package fastpath

import (
	"hash/maphash"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The TCP fast path carries the container's outbound TCP connections
// without a netstack endpoint, as pasta does: on the link's event loop
// (eventloop) it translates the container's segments into calls on a
// host socket, and what the host socket reads into segments. A 64-byte
// round trip through gVisor cost the process about 60 µs of CPU against
// slirp4netns' 18 (docs/benchmarks.md); most of that was the netstack and
// its goroutine hand-offs. See docs/tcp-fastpath.md for the design.
//
// What it keeps of TCP, toward the container: the handshake (MSS and
// window scale; no SACK or timestamps, which the container then leaves
// off), in-order delivery (a TAP does not reorder; anything out of order
// follows a drop and gets a duplicate ACK), retransmission from the data
// kept until acknowledged (timer with backoff, three duplicate ACKs),
// window probes, FIN and RST both ways. The host side is a kernel socket.

// TCPPolicy decides which connections the fast path carries.
type TCPPolicy interface {
	// TakeTCP is asked, on the read loop (it must not block), about a
	// SYN from the container's src to dst. With ok the fast path
	// carries the connection, its host socket connected as d says (a
	// failure answers RST). Without ok the SYN goes to the stack.
	TakeTCP(src, dst netip.AddrPort) (d TCPDial, ok bool)
}

// TCPDial says how a flow's host socket is made. The read loop makes
// it: a non-blocking connect that the event loop sees finish, as a goroutine
// per dial had the SYN-ACK wait for another thread to wake and steal it.
type TCPDial struct {
	// To is where the socket connects.
	To netip.AddrPort
	// Control, when set, runs on the socket before it connects, as a
	// net.Dialer's does (outbound address binding). It must not block.
	Control func(network, address string, c syscall.RawConn) error
	// Timeout bounds the connect; 0 leaves it to the kernel.
	Timeout time.Duration
	// Result, when set, is told once how the connect ended (nil:
	// connected). It runs on the read loop.
	Result func(error)
	// Done, when set, runs once when the flow has ended.
	Done func()
}

type tcpFlowKey struct{ src, dst netip.AddrPort }

// tcpTable is the fast path's table of TCP flows.
type tcpTable struct {
	*core
	policy TCPPolicy    // nil: off
	seed   maphash.Seed // keys the hash of initial sequence numbers

	// nextQueue picks the queue of a published flow, in turn.
	nextQueue atomic.Uint32

	mu     sync.RWMutex
	flows  map[tcpFlowKey]*tcpFlow
	closed bool
}

// EnableTCP carries the outbound connections policy takes past the
// stack, and published ones (DialTCP). Call it before the NIC is
// created. A pcap sniffer on the link would not see these connections.
func (p *Path) EnableTCP(policy TCPPolicy) {
	fp := &p.tcp
	fp.policy = policy
	fp.flows = map[tcpFlowKey]*tcpFlow{}
	fp.seed = maphash.MakeSeed()
	// The flows' work is done on the loops, which then wait in their
	// own epoll_wait; with one P they wait in Go's poller still, as
	// their own waits would keep that P from the rest of the program.
	for _, q := range p.queues {
		q.loop.SetViaGo(runtime.GOMAXPROCS(0) < 2)
	}
}

// TCPFlows counts the connections on the fast path.
func (p *Path) TCPFlows() int {
	fp := &p.tcp
	fp.mu.RLock()
	defer fp.mu.RUnlock()
	return len(fp.flows)
}

// close ends every flow: their host sockets close. The loop has
// stopped by then; flows have no goroutines of their own.
func (t *tcpTable) close() {
	if t.policy == nil {
		return
	}
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	for _, f := range t.snapshot() {
		f.mu.Lock()
		// A flow whose container side has finished and handed all
		// to the host socket closes gracefully: the kernel still
		// delivers what the socket holds. The others are reset.
		f.closeLocked(false, !f.sentAllLocked())
		f.mu.Unlock()
	}
}

// DrainTCP waits, at most timeout, until every fast-path flow has
// been closed by the container and has handed all its data to the host
// socket: what `run` does when its command exits, so that the last
// bytes a command sent before exiting (its sockets live on in the
// namespace) are not cut. It reports whether everything drained.
func (p *Path) DrainTCP(timeout time.Duration) bool {
	fp := &p.tcp
	if fp.policy == nil {
		return true
	}
	deadline := time.Now().Add(timeout)
	for {
		drained := true
		for _, f := range fp.snapshot() {
			f.mu.Lock()
			done := f.closed || f.sentAllLocked()
			f.mu.Unlock()
			if !done {
				drained = false
				break
			}
		}
		if drained {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// isn picks an initial sequence number as RFC 6528 does: a clock that
// ticks every 4 µs plus a keyed hash of the 4-tuple. A new connection on
// a 4-tuple then starts above where the last one ended, which is what
// a container's socket in TIME-WAIT wants of a SYN to accept it.
func (t *tcpTable) isn(key tcpFlowKey) uint32 {
	return uint32(time.Now().UnixNano()/4000) + uint32(maphash.Comparable(t.seed, key))
}

// snapshot lists the flows, so that each can be locked without t.mu
// (the lock order is a flow's mu, then t.mu).
func (t *tcpTable) snapshot() []*tcpFlow {
	t.mu.RLock()
	defer t.mu.RUnlock()
	flows := make([]*tcpFlow, 0, len(t.flows))
	for _, f := range t.flows {
		flows = append(flows, f)
	}
	return flows
}

func (t *tcpTable) remove(f *tcpFlow) {
	t.mu.Lock()
	if t.flows[f.key] == f {
		delete(t.flows, f.key)
	}
	t.mu.Unlock()
}

// intercept hands a frame read from the TAP's queue q (hdr, then rest)
// to its fast-path flow, or starts one for a SYN the policy takes, and
// reports whether it did. It runs on the queue's read loop before the
// frame becomes a gVisor buffer.
func (t *tcpTable) intercept(q int, hdr, rest []byte) bool {
	if len(hdr) < header.EthernetMinimumSize {
		return false
	}
	if string(hdr[:header.EthernetAddressSize]) != string(t.mac) { // no string made per frame
		return false
	}
	seg, ok := parseTCP(hdr, len(hdr)+len(rest))
	if !ok {
		return false
	}
	key := tcpFlowKey{src: seg.src, dst: seg.dst}
	rq := t.queues[q]
	if f := rq.last; f != nil && f.key == key {
		f.mu.Lock()
		if !f.closed {
			f.applyLocked(rq.loop, &seg, hdr, rest)
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
	}
	t.mu.RLock()
	f := t.flows[key]
	t.mu.RUnlock()
	if f == nil {
		if seg.flags&(flagSYN|flagACK|flagRST|flagFIN) != flagSYN {
			return false // the stack answers strays with RST
		}
		return t.start(q, &seg, hdr)
	}
	rq.last = f
	f.mu.Lock()
	f.applyLocked(rq.loop, &seg, hdr, rest)
	f.mu.Unlock()
	return true
}

// start makes the flow of the container's SYN seg, read on queue q,
// which then owns it; hdr is its frame's first bytes.
func (t *tcpTable) start(q int, seg *tcpSeg, hdr []byte) bool {
	guestMAC := header.Ethernet(hdr).SourceAddress()
	if !header.IsValidUnicastEthernetAddress(guestMAC) {
		return false
	}
	d, ok := t.policy.TakeTCP(seg.src, seg.dst)
	if !ok {
		return false
	}
	f := newOutboundFlow(t, q, seg, guestMAC)
	t.mu.Lock()
	if t.closed || t.flows[f.key] != nil {
		t.mu.Unlock()
		if d.Done != nil {
			d.Done()
		}
		return true
	}
	t.flows[f.key] = f
	t.mu.Unlock()
	t.link.LearnGuest(hdr)
	t.stats.TCPFlows.Add(1)
	f.done = d.Done
	f.hs.result = d.Result
	f.mu.Lock()
	f.hs.connect(&d)
	f.mu.Unlock()
	return true
}
