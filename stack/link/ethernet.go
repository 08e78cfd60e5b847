package link

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ethernet is what the endpoint tells gVisor of its link, an Ethernet
// with the gateway's fixed MAC, and its link header: the part of
// stack.LinkEndpoint that moves no frames. Endpoint embeds it.
type ethernet struct {
	mac tcpip.LinkAddress
	mtu atomic.Uint32
}

// MTU implements stack.LinkEndpoint.
func (l *ethernet) MTU() uint32 { return l.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (l *ethernet) SetMTU(mtu uint32) { l.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (l *ethernet) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (l *ethernet) LinkAddress() tcpip.LinkAddress { return l.mac }

// SetLinkAddress implements stack.LinkEndpoint; the gateway MAC is fixed.
func (l *ethernet) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. The kernel checksums what it
// hands a TAP without virtio headers, so received checksums need no check.
func (l *ethernet) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload | stack.CapabilityResolutionRequired
}

// ARPHardwareType implements stack.LinkEndpoint.
func (l *ethernet) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// SetOnCloseAction implements stack.LinkEndpoint; the TAP needs no action.
func (l *ethernet) SetOnCloseAction(func()) {}

// AddHeader implements stack.LinkEndpoint.
func (l *ethernet) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (l *ethernet) ParseHeader(pkt *stack.PacketBuffer) bool {
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(hdr).Type()
	return true
}
