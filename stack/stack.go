// Package stack wires the gVisor netstack that terminates the container's
// traffic: the NIC on a link endpoint (stack/link), the gateway's and DNS
// addresses, routes, router advertisements and TCP tuning. The link, the
// fast path past the netstack (stack/fastpath) and their event loop
// (stack/eventloop) are packages of their own; network.New wires them.
package stack

import (
	"fmt"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// NICID is the one NIC of the stack.
const NICID tcpip.NICID = 1

// GatewayMAC is the stack's MAC on the TAP: locally administered, fixed,
// and the one slirp4netns uses (52:55 followed by the gateway's address).
func GatewayMAC(a Addressing) tcpip.LinkAddress {
	g := a.Gateway.As4()
	return tcpip.LinkAddress([]byte{0x52, 0x55, g[0], g[1], g[2], g[3]})
}

// Handlers receive what the stack does not answer itself.
type Handlers struct {
	TCP func(*tcp.ForwarderRequest)
	UDP func(*udp.ForwarderRequest) bool
	// ICMP4 and ICMP6 see the ICMP packets no endpoint claimed;
	// returning true stops the stack from answering an echo request
	// itself (gVisor answers IPv6 echo for every address otherwise).
	ICMP4 func(stack.TransportEndpointID, *stack.PacketBuffer) bool
	ICMP6 func(stack.TransportEndpointID, *stack.PacketBuffer) bool
}

// Config is everything New needs.
type Config struct {
	Link       stack.LinkEndpoint
	Addressing Addressing
	// IPv6 is the IPv6 network; off when not Enabled.
	IPv6     Addressing6
	Handlers Handlers
	// MaxInFlight bounds half-open TCP connections awaiting the
	// handler; SYNs beyond it are dropped (the guest retransmits).
	MaxInFlight int
}

// Buffer sizes for TCP endpoints. At MTU 65520 gVisor's 1 MiB default is
// only 16 segments; larger windows keep a fast path busy.
const (
	tcpBufferDefault = 4 << 20
	tcpBufferMax     = 8 << 20
)

// timeWaitTimeout bounds TIME_WAIT in the netstack.
const timeWaitTimeout = 5 * time.Second

// New builds the stack. Options and handlers are set before the NIC
// exists, so that no early packet finds the stack unprepared.
func New(cfg Config) (*stack.Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocolWithOptions(ipv6.Options{
			// The stack's addresses are its own by construction: no
			// duplicate address detection delaying them, and no router
			// solicitations of its own.
			DADConfigs: stack.DADConfigurations{DupAddrDetectTransmits: 0},
		}), arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        false,
	})
	fail := func(what string, err tcpip.Error) (*stack.Stack, error) {
		s.Close()
		s.Wait()
		return nil, fmt.Errorf("netstack: %s: %s", what, err)
	}

	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fail("SACK", err)
	}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufferDefault, Max: tcpBufferMax}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fail("receive buffer", err)
	}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufferDefault, Max: tcpBufferMax}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fail("send buffer", err)
	}
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return fail("receive buffer moderation", err)
	}
	// TIME_WAIT guards a 4-tuple against stray old segments; on this
	// one virtual link, where segments are not delayed in flight, seconds
	// are enough, and gVisor's 60 s would keep every closed flow's
	// endpoint for a minute under connection churn.
	timeWait := tcpip.TCPTimeWaitTimeoutOption(timeWaitTimeout)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &timeWait); err != nil {
		return fail("TIME_WAIT timeout", err)
	}

	if cfg.Handlers.TCP != nil {
		maxInFlight := cfg.MaxInFlight
		if maxInFlight <= 0 {
			maxInFlight = 2048
		}
		fwd := tcp.NewForwarder(s, 0, maxInFlight, cfg.Handlers.TCP)
		s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	}
	if cfg.Handlers.UDP != nil {
		fwd := udp.NewForwarder(s, cfg.Handlers.UDP)
		s.SetTransportProtocolHandler(udp.ProtocolNumber, fwd.HandlePacket)
	}
	if cfg.Handlers.ICMP4 != nil {
		s.SetTransportProtocolHandler(icmp.ProtocolNumber4, cfg.Handlers.ICMP4)
	}
	if cfg.Handlers.ICMP6 != nil {
		s.SetTransportProtocolHandler(icmp.ProtocolNumber6, cfg.Handlers.ICMP6)
	}

	if err := s.CreateNIC(NICID, cfg.Link); err != nil {
		return fail("creating the NIC", err)
	}
	// Promiscuous: accept packets for any destination (the whole
	// internet is behind this NIC). Spoofing: answer from those
	// destinations' addresses.
	if err := s.SetPromiscuousMode(NICID, true); err != nil {
		return fail("promiscuous mode", err)
	}
	if err := s.SetSpoofing(NICID, true); err != nil {
		return fail("spoofing", err)
	}
	a := cfg.Addressing
	for _, addr := range []tcpip.Address{tcpip.AddrFrom4(a.Gateway.As4()), tcpip.AddrFrom4(a.DNS.As4())} {
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: a.Network.Bits()},
		}
		if err := s.AddProtocolAddress(NICID, pa, stack.AddressProperties{}); err != nil {
			return fail("adding "+addr.String(), err)
		}
	}
	if v6 := cfg.IPv6; v6.Enabled() {
		for _, p := range []netip.Prefix{
			netip.PrefixFrom(v6.Gateway, v6.Network.Bits()),
			netip.PrefixFrom(v6.DNS, v6.Network.Bits()),
			netip.PrefixFrom(LinkLocal(GatewayMAC(a)), 64),
		} {
			pa := tcpip.ProtocolAddress{
				Protocol:          ipv6.ProtocolNumber,
				AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom16(p.Addr().As16()), PrefixLen: p.Bits()},
			}
			if err := s.AddProtocolAddress(NICID, pa, stack.AddressProperties{}); err != nil {
				return fail("adding "+p.String(), err)
			}
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: NICID},
		{Destination: header.IPv6EmptySubnet, NIC: NICID},
	})
	return s, nil
}
