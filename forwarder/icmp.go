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
	if f.cfg.Guest == nil {
		return true
	}
	if v, _ := f.cfg.Policy.Translate(netip.AddrPortFrom(dst, 1)); v != Dial {
		return true
	}
	select {
	case f.pingSlots <- struct{}{}:
	default:
		return true // too many pings in flight: drop, as a lossy path would
	}
	ident, seq := ih.Ident(), ih.Sequence()
	data := pkt.Data().AsRange().ToSlice()
	if !f.goFlow(func() {
		defer func() { <-f.pingSlots }()
		f.ping(src, dst, ident, seq, data)
	}) {
		<-f.pingSlots
	}
	return true
}

// ping sends one echo through a ping socket and relays the reply with the
// container's own identifier (Linux rewrites it to the socket's).
func (f *Forwarder) ping(src, dst netip.Addr, ident, seq uint16, data []byte) {
	c, err := icmp.ListenPacket("udp4", "0.0.0.0")
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
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(ident), Seq: int(seq), Data: data}}
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
		rm, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := rm.Body.(*icmp.Echo)
		if !ok || echo.Seq != int(seq) {
			continue
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
	if f.cfg.Guest == nil || !src.Addr().Is4() {
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
