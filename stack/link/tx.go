package link

import (
	"errors"
	"os"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// txQueueLen bounds the SYN-ACKs waiting for the writer goroutine.
const txQueueLen = 256

// WritePackets implements stack.LinkWriter. Packets are written inline
// (a hand-off to another goroutine costs tens of µs of latency), except
// SYN-ACKs: gVisor's forwarder sends those while holding the new
// endpoint's lock, and the container's ACK and first data, arriving while
// that TAP write is still in the kernel, made the TCP processor goroutines
// spin on that lock (78% of the CPU under a new-connection load, about
// 1 ms per connection).
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if e.owns.foreignClaim(pkt) {
			n++
			continue
		}
		if isSynAck(pkt) {
			if !e.synAcks.push(pkt) {
				return n, &tcpip.ErrClosedForSend{}
			}
			n++
			continue
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

// synAckQueue carries the stack's SYN-ACKs to a writer goroutine of
// their own, so that no stack goroutine makes the TAP syscall while it
// holds an endpoint lock (see WritePackets).
type synAckQueue struct {
	q    chan *stack.PacketBuffer
	done chan struct{} // closed by close: the writer ends
	once sync.Once
}

func newSynAckQueue() synAckQueue {
	return synAckQueue{q: make(chan *stack.PacketBuffer, txQueueLen), done: make(chan struct{})}
}

// push queues pkt, with a reference of its own; false: the queue is
// closed and pkt was not queued.
func (s *synAckQueue) push(pkt *stack.PacketBuffer) bool {
	pkt.IncRef()
	select {
	case s.q <- pkt:
		return true
	case <-s.done:
		pkt.DecRef()
		return false
	}
}

// run writes the queued SYN-ACKs with write until close.
func (s *synAckQueue) run(write func(*stack.PacketBuffer) error) {
	for {
		select {
		case pkt := <-s.q:
			write(pkt)
			pkt.DecRef()
		case <-s.done:
			for {
				select {
				case pkt := <-s.q:
					pkt.DecRef()
				default:
					return
				}
			}
		}
	}
}

// close ends the writer, which drops what is still queued.
func (s *synAckQueue) close() { s.once.Do(func() { close(s.done) }) }

// writePacket writes one packet to the TAP: on a queue picked by the
// packet's flow hash (gVisor's TCP endpoints set one each), so that the
// kernel keeps each of the stack's flows on one queue (see Endpoint).
func (e *Endpoint) writePacket(pkt *stack.PacketBuffer) error {
	iovs := pkt.AsSlices()
	if e.vnet {
		var hdr [VnetHdrSize]byte
		h := vnetHdrFor(pkt)
		h.Encode(hdr[:])
		iovs = append([][]byte{hdr[:]}, iovs...)
	}
	if err := e.queues[txQueue(pkt.Hash, e.ActiveQueues())].tap.writev(iovs); err != nil {
		e.stats.TxErrors.Add(1)
		return err
	}
	e.stats.TxFrames.Add(1)
	return nil
}

// txQueue is the queue, of n, for a frame whose flow hashes to hash.
func txQueue(hash uint32, n int) int {
	if n <= 1 {
		return 0
	}
	return int(hash % uint32(n))
}

// ownsFunc says which addresses the stack may claim in ARP replies and
// neighbour advertisements; nil: all.
type ownsFunc func(tcpip.Address) bool

// foreignClaim reports an ARP reply or neighbour advertisement for an
// address the stack does not own. With spoofing and promiscuous mode on,
// gVisor may claim any address (its neighbour code checks targets with
// temporary addresses allowed; for ARP this answered the container's own
// conflict probes); only the gateway, DNS and link-local addresses are
// really here.
func (owns ownsFunc) foreignClaim(pkt *stack.PacketBuffer) bool {
	if owns == nil {
		return false
	}
	switch pkt.NetworkProtocolNumber {
	case header.ARPProtocolNumber:
		arp := header.ARP(pkt.NetworkHeader().Slice())
		if !arp.IsValid() || arp.Op() != header.ARPReply {
			return false
		}
		return !owns(tcpip.AddrFrom4Slice(arp.ProtocolAddressSender()))
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
		return !owns(na.TargetAddress())
	}
	return false
}

// WriteFrame sends one whole Ethernet frame to the container, bypassing
// the stack (ICMP errors and echo replies built by the forwarder), on the
// first queue.
func (e *Endpoint) WriteFrame(frame []byte) error {
	t := &e.queues[0].tap
	if e.vnet {
		var none [VnetHdrSize]byte
		return t.writev([][]byte{none[:], frame})
	}
	return t.writev([][]byte{frame})
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *Stats { return &e.stats }

// WritePieces sends one frame to the container on queue q (0 if there
// is no such queue, or it is detached: SetActiveQueues), bypassing the stack, from pieces: its virtio-net
// header first when VnetHdr, then the Ethernet frame (the fast path's
// segments and datagrams). It is counted in Stats; a full TAP drops it
// (see tapFD.writev).
func (e *Endpoint) WritePieces(q int, pieces [][]byte) error {
	if uint(q) >= uint(e.active.Load()) {
		q = 0
	}
	if err := e.queues[q].tap.writev(pieces); err != nil {
		e.stats.TxErrors.Add(1)
		return err
	}
	e.stats.TxFrames.Add(1)
	return nil
}
