package link

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
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
func (e *Endpoint) writeLoop() {
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
func (e *Endpoint) writePacket(pkt *stack.PacketBuffer) error {
	iovs := pkt.AsSlices()
	if e.vnet {
		var hdr [VnetHdrSize]byte
		h := vnetHdrFor(pkt)
		h.Encode(hdr[:])
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
func (e *Endpoint) isForeignClaim(pkt *stack.PacketBuffer) bool {
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
func (e *Endpoint) WriteFrame(frame []byte) error {
	if e.vnet {
		var none [VnetHdrSize]byte
		return e.writev([][]byte{none[:], frame})
	}
	return e.writev([][]byte{frame})
}

// GuestMAC returns the container's MAC once a frame from it was seen.
func (e *Endpoint) GuestMAC() (tcpip.LinkAddress, bool) {
	p := e.guestMAC.Load()
	if p == nil {
		return "", false
	}
	return *p, true
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *Stats { return &e.stats }

// WritePieces sends one frame to the container, bypassing the stack,
// from pieces: its virtio-net header first when VnetHdr, then the
// Ethernet frame (the fast path's segments and datagrams). It is
// counted in Stats; a full TAP drops it (see writev).
func (e *Endpoint) WritePieces(pieces [][]byte) error {
	if err := e.writev(pieces); err != nil {
		e.stats.TxErrors.Add(1)
		return err
	}
	e.stats.TxFrames.Add(1)
	return nil
}

// writev writes one frame, or fails at once with EAGAIN when the TAP
// cannot take it: the frame is then dropped, as a NIC drops on a full
// queue. Waiting instead would stall the stack's writer, and with it every
// flow, behind a container that does not read; TCP retransmits what is
// lost.
func (e *Endpoint) writev(iovs [][]byte) error {
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
