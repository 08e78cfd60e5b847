package forwarder

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

const pingTimeout = 5 * time.Second

// HandleICMP4 sees the ICMPv4 packets no endpoint claimed. Echo requests
// to outside addresses go out through an unprivileged ping socket and
// return true, so the stack never forges a reply; everything else (echo
// to the gateway or DNS address included) is left to the stack.
func (f *Forwarder) HandleICMP4(_ stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	ih := header.ICMPv4(pkt.TransportHeader().Slice())
	if len(ih) < header.ICMPv4MinimumSize || ih.Type() != header.ICMPv4Echo {
		return false
	}
	nh := header.IPv4(pkt.NetworkHeader().Slice())
	dst := addrPortOf(nh.DestinationAddress(), 0).Addr()
	src := addrPortOf(nh.SourceAddress(), 0).Addr()
	if dst == f.cfg.Policy.Gateway || dst == f.cfg.Policy.DNS {
		return false
	}
	f.forwardEcho(src, dst, ih.Ident(), ih.Sequence(), pkt.Data().AsRange().ToSlice())
	return true
}

// HandleICMP6 is HandleICMP4 for ICMPv6. gVisor answers IPv6 echo for
// every destination unless this returns true, so it does for all but the
// stack's own addresses.
func (f *Forwarder) HandleICMP6(_ stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	ih := header.ICMPv6(pkt.TransportHeader().Slice())
	if len(ih) < header.ICMPv6EchoMinimumSize || ih.Type() != header.ICMPv6EchoRequest {
		return false
	}
	nh := header.IPv6(pkt.NetworkHeader().Slice())
	dst := addrPortOf(nh.DestinationAddress(), 0).Addr()
	src := addrPortOf(nh.SourceAddress(), 0).Addr()
	p := f.cfg.Policy
	if p.Gateway6.IsValid() && (dst == p.Gateway6 || dst == p.DNS6 || dst == p.LinkLocal6) {
		// The stack's own addresses: it answers them itself.
		return false
	}
	if dst.IsLinkLocalUnicast() {
		// Another link-local address: nobody else is on this link.
		return true
	}
	f.forwardEcho(src, dst, ih.Ident(), ih.Sequence(), pkt.Data().AsRange().ToSlice())
	return true
}

// forwardEcho pings dst on the container's behalf when the policy lets
// the container reach it; otherwise, or with too many pings in flight,
// the echo is dropped, as a lossy path would drop it.
func (f *Forwarder) forwardEcho(src, dst netip.Addr, ident, seq uint16, data []byte) {
	if f.cfg.Guest == nil {
		return
	}
	if v, _ := f.cfg.Policy.Translate(netip.AddrPortFrom(dst, 1)); v != Dial {
		return
	}
	select {
	case f.pingSlots <- struct{}{}:
	default:
		return
	}
	if !f.goFlow(func() {
		defer func() { <-f.pingSlots }()
		f.ping(src, dst, ident, seq, data)
	}) {
		<-f.pingSlots
	}
}

// ping sends one echo through a ping socket and relays the reply with the
// container's own identifier (Linux rewrites it to the socket's).
func (f *Forwarder) ping(src, dst netip.Addr, ident, seq uint16, data []byte) {
	network, laddr, proto := "udp4", "0.0.0.0", 1
	var echoType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, laddr, proto = "udp6", "::", 58
		echoType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	c, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EPROTONOSUPPORT) {
			f.pingWarnOnce.Do(func() {
				f.log.Warn("ICMP echo to outside addresses is unavailable: this user's group is outside net.ipv4.ping_group_range; pings get no reply (allow it with: sysctl -w net.ipv4.ping_group_range=\"0 2147483647\")",
					"ping_group_range", readPingGroupRange(), "gid", os.Getgid())
			})
		} else {
			f.log.Debug("ping socket", "err", err)
		}
		return
	}
	defer c.Close()
	msg := icmp.Message{Type: echoType, Body: &icmp.Echo{ID: int(ident), Seq: int(seq), Data: data}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return
	}
	if _, err := c.WriteTo(b, &net.UDPAddr{IP: dst.AsSlice()}); err != nil {
		f.log.Debug("ping send", "dst", dst, "err", err)
		return
	}
	deadline := time.Now().Add(pingTimeout)
	if d, ok := f.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetReadDeadline(deadline)
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil || f.ctx.Err() != nil {
			return
		}
		rm, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || rm.Type != replyType {
			continue
		}
		echo, ok := rm.Body.(*icmp.Echo)
		if !ok || echo.Seq != int(seq) {
			continue
		}
		if dst.Is6() {
			reply := make([]byte, header.ICMPv6EchoMinimumSize+len(echo.Data))
			ih := header.ICMPv6(reply)
			ih.SetType(header.ICMPv6EchoReply)
			ih.SetIdent(ident)
			ih.SetSequence(seq)
			copy(reply[header.ICMPv6EchoMinimumSize:], echo.Data)
			f.cfg.Guest.WriteToGuest(buildICMPv6(dst, src, reply))
			return
		}
		reply := make([]byte, header.ICMPv4MinimumSize+len(echo.Data))
		ih := header.ICMPv4(reply)
		ih.SetType(header.ICMPv4EchoReply)
		ih.SetIdent(ident)
		ih.SetSequence(seq)
		copy(ih.Payload(), echo.Data)
		ih.SetChecksum(^checksum.Checksum(reply, 0))
		f.cfg.Guest.WriteToGuest(buildIPv4(dst, src, header.ICMPv4ProtocolNumber, reply))
		return
	}
}

// portUnreachable reports to the container that the host's peer refused
// the flow src->dst, quoting a header like the datagram it sent.
func (f *Forwarder) portUnreachable(src, dst netip.AddrPort, lastLen int) {
	if f.cfg.Guest == nil {
		return
	}
	if src.Addr().Is6() {
		f.portUnreachable6(src, dst, lastLen)
		return
	}
	quoted := buildIPv4(src.Addr(), dst.Addr(), header.UDPProtocolNumber, make([]byte, header.UDPMinimumSize+lastLen))
	uh := header.UDP(quoted[header.IPv4MinimumSize:])
	uh.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(header.UDPMinimumSize + lastLen)})
	quoted = quoted[:header.IPv4MinimumSize+header.UDPMinimumSize]

	msg := make([]byte, header.ICMPv4MinimumSize+len(quoted))
	ih := header.ICMPv4(msg)
	ih.SetType(header.ICMPv4DstUnreachable)
	ih.SetCode(header.ICMPv4PortUnreachable)
	copy(msg[header.ICMPv4MinimumSize:], quoted)
	ih.SetChecksum(^checksum.Checksum(msg, 0))
	f.cfg.Guest.WriteToGuest(buildIPv4(dst.Addr(), src.Addr(), header.ICMPv4ProtocolNumber, msg))
}

func (f *Forwarder) portUnreachable6(src, dst netip.AddrPort, lastLen int) {
	// Quote the IPv6 and UDP headers of a datagram like the last one.
	quoted := make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize)
	header.IPv6(quoted).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(header.UDPMinimumSize + lastLen),
		TransportProtocol: header.UDPProtocolNumber,
		HopLimit:          64,
		SrcAddr:           tcpip.AddrFrom16(src.Addr().As16()),
		DstAddr:           tcpip.AddrFrom16(dst.Addr().As16()),
	})
	header.UDP(quoted[header.IPv6MinimumSize:]).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(header.UDPMinimumSize + lastLen)})
	msg := make([]byte, header.ICMPv6DstUnreachableMinimumSize+len(quoted))
	ih := header.ICMPv6(msg)
	ih.SetType(header.ICMPv6DstUnreachable)
	ih.SetCode(header.ICMPv6PortUnreachable)
	copy(msg[header.ICMPv6DstUnreachableMinimumSize:], quoted)
	f.cfg.Guest.WriteToGuest(buildICMPv6(dst.Addr(), src.Addr(), msg))
}

// buildICMPv6 makes an IPv6 packet around an ICMPv6 message, computing
// its checksum.
func buildICMPv6(src, dst netip.Addr, msg []byte) []byte {
	s, d := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
	ih := header.ICMPv6(msg)
	ih.SetChecksum(0)
	ih.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ih, Src: s, Dst: d}))
	pkt := make([]byte, header.IPv6MinimumSize+len(msg))
	header.IPv6(pkt).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(msg)),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           s,
		DstAddr:           d,
	})
	copy(pkt[header.IPv6MinimumSize:], msg)
	return pkt
}

// buildIPv4 makes an IPv4 packet around payload.
func buildIPv4(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	pkt := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(pkt)),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpip.AddrFrom4(src.As4()),
		DstAddr:     tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(pkt[header.IPv4MinimumSize:], payload)
	return pkt
}

func readPingGroupRange() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b)), " ")
}
