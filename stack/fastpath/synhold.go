package fastpath

import (
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// A container that aborts a connection (RST) may reuse its 4-tuple at
// once: Linux keeps no TIME_WAIT after a reset. gVisor hands the RST to
// the old endpoint's processor goroutine, so a SYN that follows a fraction
// of a millisecond later still finds the old endpoint in the demuxer and
// is queued to it; when that endpoint closes, gVisor looks for another
// endpoint for the SYN, never at the forwarder, and answers RST: the
// container's connect fails with "connection refused" (seen in the soak,
// about 1 in 3000 resets). The fast path holds such a SYN, among the frames
// the link offers it, until the old endpoint is gone, and then has the
// link hand it to the stack (link.Endpoint.Inject).
const (
	synHoldStep  = time.Millisecond
	synHoldSteps = 50
	// synHoldLimit bounds the SYNs held at once; beyond it they are
	// delivered as they come.
	synHoldLimit = 256
)

// SYNBusy reports whether an endpoint still holds the 4-tuple of a SYN
// arriving from the container.
type SYNBusy func(id stack.TransportEndpointID, proto tcpip.NetworkProtocolNumber) bool

// SetSYNBusy installs the check; the read loop may already run.
func (p *Path) SetSYNBusy(fn SYNBusy) { p.syn.busy.Store(&fn) }

// synHold holds SYNs whose 4-tuple the stack still holds.
type synHold struct {
	*core
	busy atomic.Pointer[SYNBusy]
	held atomic.Int32 // SYNs held now
}

// hold holds a copy of the frame read as hdr then rest, if it is a SYN
// to the stack (to the link's MAC, or multicast: what the link passes)
// whose 4-tuple is still taken, and reports whether it did.
func (s *synHold) hold(hdr, rest []byte) bool {
	busy := s.busy.Load()
	if busy == nil {
		return false
	}
	id, proto, ok := synID(hdr)
	if !ok || string(hdr[:header.EthernetAddressSize]) != string(s.mac) && !header.IsMulticastEthernetAddress(header.Ethernet(hdr).DestinationAddress()) {
		return false
	}
	if !(*busy)(id, proto) {
		return false
	}
	if s.held.Add(1) > synHoldLimit {
		s.held.Add(-1)
		return false
	}
	// The link learns the container's MAC from the frames it passes to
	// the stack; this one it does not see.
	s.link.LearnGuest(hdr)
	held := make([]byte, 0, len(hdr)+len(rest))
	held = append(append(held, hdr...), rest...)
	s.stats.SYNHeld.Add(1)
	var retry func(step int)
	retry = func(step int) {
		// The timer's goroutine ends with this call; Close makes the
		// last one drop the frame.
		if s.closed.Load() {
			s.held.Add(-1)
			return
		}
		if step < synHoldSteps && (*busy)(id, proto) {
			time.AfterFunc(synHoldStep, func() { retry(step + 1) })
			return
		}
		s.held.Add(-1)
		s.link.Inject(held)
	}
	time.AfterFunc(synHoldStep, func() { retry(1) })
	return true
}

// synID parses a TCP SYN without ACK (no IPv6 extension headers, no IPv4
// fragment) into the endpoint ID it would be delivered to.
func synID(frame []byte) (stack.TransportEndpointID, tcpip.NetworkProtocolNumber, bool) {
	var id stack.TransportEndpointID
	if len(frame) < header.EthernetMinimumSize {
		return id, 0, false
	}
	var tcp header.TCP
	var proto tcpip.NetworkProtocolNumber
	switch header.Ethernet(frame).Type() {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(frame[header.EthernetMinimumSize:])
		if len(ip) < header.IPv4MinimumSize || ip.HeaderLength() < header.IPv4MinimumSize || int(ip.HeaderLength()) > len(ip) ||
			ip.Protocol() != uint8(header.TCPProtocolNumber) || ip.FragmentOffset() != 0 || ip.More() {
			return id, 0, false
		}
		tcp = header.TCP(ip[ip.HeaderLength():])
		id.LocalAddress, id.RemoteAddress = ip.DestinationAddress(), ip.SourceAddress()
		proto = header.IPv4ProtocolNumber
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(frame[header.EthernetMinimumSize:])
		if len(ip) < header.IPv6MinimumSize || ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return id, 0, false
		}
		tcp = header.TCP(ip[header.IPv6MinimumSize:])
		id.LocalAddress, id.RemoteAddress = ip.DestinationAddress(), ip.SourceAddress()
		proto = header.IPv6ProtocolNumber
	default:
		return id, 0, false
	}
	if len(tcp) < header.TCPMinimumSize || tcp.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
		return id, 0, false
	}
	id.LocalPort, id.RemotePort = tcp.DestinationPort(), tcp.SourcePort()
	return id, proto, true
}
