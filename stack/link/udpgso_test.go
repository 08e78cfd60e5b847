package link

import (
	"bytes"
	"slices"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	gsoSrc4 = tcpip.AddrFrom4([4]byte{10, 0, 2, 100})
	gsoDst4 = tcpip.AddrFrom4([4]byte{10, 0, 2, 2})
	gsoSrc6 = tcpip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64})
	gsoDst6 = tcpip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
)

// superFrame makes a UDP super-frame as the kernel hands it over with
// USO: the lengths cover the whole run, and the checksum is partial.
func superFrame(v4 bool, payload []byte) []byte {
	eth := make([]byte, header.EthernetMinimumSize)
	udpLen := header.UDPMinimumSize + len(payload)
	var ip []byte
	if v4 {
		header.Ethernet(eth).Encode(&header.EthernetFields{Type: header.IPv4ProtocolNumber})
		ip = make([]byte, header.IPv4MinimumSize)
		header.IPv4(ip).Encode(&header.IPv4Fields{TotalLength: uint16(header.IPv4MinimumSize + udpLen), ID: 7, TTL: 64,
			Protocol: uint8(header.UDPProtocolNumber), SrcAddr: gsoSrc4, DstAddr: gsoDst4})
	} else {
		header.Ethernet(eth).Encode(&header.EthernetFields{Type: header.IPv6ProtocolNumber})
		ip = make([]byte, header.IPv6MinimumSize)
		header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(udpLen), TransportProtocol: header.UDPProtocolNumber,
			HopLimit: 64, SrcAddr: gsoSrc6, DstAddr: gsoDst6})
	}
	udp := make([]byte, header.UDPMinimumSize)
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: 4000, DstPort: 53, Length: uint16(udpLen), Checksum: 0x1234})
	return bytes.Join([][]byte{eth, ip, udp, payload}, nil)
}

func TestSplitUDP(t *testing.T) {
	payload := make([]byte, 1000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	scratch := make([]byte, MaxFrame)
	for _, tc := range []struct {
		name  string
		v4    bool
		seg   int
		n     int // payload bytes
		parts []int
	}{
		{"v4 even", true, 250, 1000, []int{250, 250, 250, 250}},
		{"v4 short last", true, 300, 1000, []int{300, 300, 300, 100}},
		{"v6 short last", false, 400, 1000, []int{400, 400, 200}},
		{"v4 seg 1", true, 1, 3, []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := superFrame(tc.v4, payload[:tc.n])
			var got []int
			var rebuilt []byte
			ok := SplitUDP(frame, tc.seg, scratch, func(f []byte) {
				ipOff := header.EthernetMinimumSize
				var udp header.UDP
				var src, dst tcpip.Address
				if tc.v4 {
					ip := header.IPv4(f[ipOff:])
					if !ip.IsValid(len(f)-ipOff) || !ip.IsChecksumValid() || int(ip.TotalLength()) != len(f)-ipOff {
						t.Fatalf("datagram %d: bad IPv4 header", len(got))
					}
					if ip.ID() != uint16(7+len(got)) {
						t.Errorf("datagram %d: IPv4 ID %d, want %d", len(got), ip.ID(), 7+len(got))
					}
					udp, src, dst = header.UDP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
				} else {
					ip := header.IPv6(f[ipOff:])
					if int(ip.PayloadLength()) != len(f)-ipOff-header.IPv6MinimumSize {
						t.Fatalf("datagram %d: IPv6 payload length %d for %d bytes", len(got), ip.PayloadLength(), len(f)-ipOff-header.IPv6MinimumSize)
					}
					udp, src, dst = header.UDP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
				}
				if int(udp.Length()) != len(udp) || udp.SourcePort() != 4000 || udp.DestinationPort() != 53 {
					t.Fatalf("datagram %d: UDP length %d for %d bytes, ports %d>%d", len(got), udp.Length(), len(udp), udp.SourcePort(), udp.DestinationPort())
				}
				if !udp.IsChecksumValid(src, dst, checksum.Checksum(udp.Payload(), 0)) {
					t.Errorf("datagram %d: bad UDP checksum", len(got))
				}
				got = append(got, len(udp.Payload()))
				rebuilt = append(rebuilt, udp.Payload()...)
			})
			if !ok {
				t.Fatal("SplitUDP refused a super-frame")
			}
			if !slices.Equal(got, tc.parts) {
				t.Errorf("datagrams of %v bytes, want %v", got, tc.parts)
			}
			if !bytes.Equal(rebuilt, payload[:tc.n]) {
				t.Error("the datagrams' payloads do not make the run's")
			}
		})
	}

	for _, tc := range []struct {
		name  string
		frame []byte
		seg   int
	}{
		{"one datagram", superFrame(true, payload[:100]), 100},
		{"seg 0", superFrame(true, payload[:100]), 0},
		{"truncated", superFrame(true, payload[:100])[:60], 10},
		{"tcp", func() []byte {
			f := superFrame(true, payload[:100])
			f[header.EthernetMinimumSize+9] = uint8(header.TCPProtocolNumber)
			return f
		}(), 10},
		{"ip options", func() []byte {
			f := superFrame(true, payload[:100])
			f[header.EthernetMinimumSize] = 0x46
			return f
		}(), 10},
		{"arp", func() []byte {
			f := superFrame(true, payload[:100])
			f[12], f[13] = 0x08, 0x06
			return f
		}(), 10},
	} {
		if SplitUDP(tc.frame, tc.seg, scratch, func([]byte) { t.Errorf("%s: a datagram made", tc.name) }) {
			t.Errorf("%s: SplitUDP took it", tc.name)
		}
	}
}

// FuzzSplitUDP feeds SplitUDP any frame and segment size, as a container
// may: it must not panic, and every datagram it makes must fit in a frame
// and be no larger than seg.
func FuzzSplitUDP(f *testing.F) {
	payload := bytes.Repeat([]byte{7}, 300)
	f.Add(superFrame(true, payload), 100)
	f.Add(superFrame(false, payload), 128)
	f.Add(superFrame(true, payload)[:50], 8)
	f.Add([]byte{}, 1)
	scratch := make([]byte, MaxFrame)
	f.Fuzz(func(t *testing.T, frame []byte, seg int) {
		SplitUDP(frame, seg, scratch, func(out []byte) {
			if len(out) > MaxFrame {
				t.Fatalf("a datagram of %d bytes", len(out))
			}
			if hdrs := header.EthernetMinimumSize + header.IPv4MinimumSize + header.UDPMinimumSize; len(out) > hdrs+header.IPv6MinimumSize+seg {
				t.Fatalf("a datagram of %d bytes for segments of %d", len(out), seg)
			}
		})
	})
}
