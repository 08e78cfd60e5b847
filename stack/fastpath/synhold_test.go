package fastpath

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpFrame builds an Ethernet frame around a TCP header with flags.
func tcpFrame(v6 bool, flags header.TCPFlags, fragOff uint16) []byte {
	ipLen := header.IPv4MinimumSize
	etype := header.IPv4ProtocolNumber
	if v6 {
		ipLen, etype = header.IPv6MinimumSize, header.IPv6ProtocolNumber
	}
	f := make([]byte, header.EthernetMinimumSize+ipLen+header.TCPMinimumSize)
	header.Ethernet(f).Encode(&header.EthernetFields{Type: etype})
	ip := f[header.EthernetMinimumSize:]
	if v6 {
		header.IPv6(ip).Encode(&header.IPv6Fields{
			PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 0x64}), DstAddr: tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}),
		})
	} else {
		header.IPv4(ip).Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + header.TCPMinimumSize), Protocol: uint8(header.TCPProtocolNumber), TTL: 64,
			FragmentOffset: fragOff, SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 100}), DstAddr: tcpip.AddrFrom4([4]byte{198, 51, 100, 1}),
		})
	}
	header.TCP(ip[ipLen:]).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, DataOffset: header.TCPMinimumSize, Flags: flags})
	return f
}

func TestSynID(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		ok    bool
		proto tcpip.NetworkProtocolNumber
	}{
		{"ipv4 syn", tcpFrame(false, header.TCPFlagSyn, 0), true, header.IPv4ProtocolNumber},
		{"ipv6 syn", tcpFrame(true, header.TCPFlagSyn, 0), true, header.IPv6ProtocolNumber},
		{"syn-ack", tcpFrame(false, header.TCPFlagSyn|header.TCPFlagAck, 0), false, 0},
		{"ack", tcpFrame(false, header.TCPFlagAck, 0), false, 0},
		{"rst", tcpFrame(true, header.TCPFlagRst, 0), false, 0},
		{"fragment", tcpFrame(false, header.TCPFlagSyn, 8), false, 0},
		{"truncated tcp", tcpFrame(false, header.TCPFlagSyn, 0)[:header.EthernetMinimumSize+header.IPv4MinimumSize+4], false, 0},
		{"truncated ip", tcpFrame(true, header.TCPFlagSyn, 0)[:header.EthernetMinimumSize+10], false, 0},
		{"runt", []byte{1, 2, 3}, false, 0},
	} {
		id, proto, ok := synID(tc.frame)
		if ok != tc.ok || proto != tc.proto {
			t.Errorf("%s: ok %v proto %d, want %v %d", tc.name, ok, proto, tc.ok, tc.proto)
			continue
		}
		if ok && (id.LocalPort != 80 || id.RemotePort != 40000 || id.LocalAddress.Len() == 0 || id.RemoteAddress.Len() == 0) {
			t.Errorf("%s: id %+v: want local port 80 (the destination), remote 40000", tc.name, id)
		}
	}
}
