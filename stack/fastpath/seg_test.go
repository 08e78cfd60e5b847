package fastpath

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/rootlessnet/rootlessnet/stack/link"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// linuxSynOpts is what Linux puts in a SYN: MSS 65495, SACK permitted,
// timestamps, NOP, window scale 7.
var linuxSynOpts = []byte{2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}

// segWithWnd is tcpSegment with another window field (tcpSegment always
// says 65535, which would hide a window read from the wrong bytes).
func segWithWnd(sport, dport uint16, seq, ack uint32, flags uint8, wnd uint16, opts, data []byte) []byte {
	s := tcpSegment(sport, dport, seq, ack, flags, opts, data)
	binary.BigEndian.PutUint16(s[14:], wnd)
	return s
}

// withIPv4Header rewrites byte i of the IPv4 header of an Ethernet+IPv4
// frame and fixes the header checksum, so that only the change matters.
func withIPv4Header(frame []byte, i int, v byte) []byte {
	ip := frame[14:]
	ip[i] = v
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], fzChecksum(ip[:int(ip[0]&0xf)*4], 0))
	return frame
}

func TestParseTCP(t *testing.T) {
	payload := []byte("hello, fast path")
	const seq, ack, wnd = 0x01020304, 0xa0b0c0d0, 0x1234
	v4 := func(flags uint8, opts, data []byte) []byte {
		return toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, nil, segWithWnd(40000, 80, seq, ack, flags, wnd, opts, data), 16))
	}
	v6 := func(flags uint8, opts, data []byte) []byte {
		return toGateway6(ipv6Packet(fzGuest6, fzWorld6, 6, 64, segWithWnd(40000, 443, seq, ack, flags, wnd, opts, data), 16))
	}
	guest4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 40000)
	world4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzWorld4)), 80)
	guest6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzGuest6)), 40000)
	world6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzWorld6)), 443)
	const h4, h6 = 14 + 20 + 20, 14 + 40 + 20

	type want struct {
		src, dst netip.AddrPort
		flags    header.TCPFlags
		mss      uint16
		wscale   int
		off      int
		data     []byte
	}
	for _, tc := range []struct {
		name     string
		frame    []byte
		hdrLen   int // bytes of the frame in hdr; 0: all
		frameLen int // 0: len(frame)
		want     *want
	}{
		{name: "ipv4 data", frame: v4(tcpACK|tcpPSH, nil, payload),
			want: &want{guest4, world4, flagACK | flagPSH, 0, -1, h4, payload}},
		{name: "ipv4 bare ACK", frame: v4(tcpACK, nil, nil),
			want: &want{guest4, world4, flagACK, 0, -1, h4, nil}},
		{name: "ipv4 Linux SYN", frame: v4(tcpSYN, linuxSynOpts, nil),
			want: &want{guest4, world4, flagSYN, 65495, 7, h4 + len(linuxSynOpts), nil}},
		{name: "ipv4 SYN without options", frame: v4(tcpSYN, nil, nil),
			want: &want{guest4, world4, flagSYN, 0, -1, h4, nil}},
		{name: "ipv4 SYN window scale above 14", frame: v4(tcpSYN, []byte{2, 4, 5, 0xb4, 1, 3, 3, 15}, nil),
			want: &want{guest4, world4, flagSYN, 1460, 14, h4 + 8, nil}},
		// Options count only on a SYN: an ACK's MSS option is no MSS.
		{name: "ipv4 ACK with options and data", frame: v4(tcpACK, []byte{2, 4, 5, 0xb4, 1, 3, 3, 7}, payload),
			want: &want{guest4, world4, flagACK, 0, -1, h4 + 8, payload}},
		{name: "ipv4 Ethernet padding", frame: append(v4(tcpACK, nil, nil), make([]byte, 6)...),
			want: &want{guest4, world4, flagACK, 0, -1, h4, nil}},
		{name: "ipv4 padding after data", frame: append(v4(tcpACK, nil, []byte("x")), 0, 0, 0, 0, 0),
			want: &want{guest4, world4, flagACK, 0, -1, h4, []byte("x")}},
		// As the read loop hands a large frame: headers in hdr, the
		// payload in the rest.
		{name: "ipv4 payload beyond hdr", frame: v4(tcpACK, nil, payload), hdrLen: h4,
			want: &want{guest4, world4, flagACK, 0, -1, h4, payload}},
		{name: "ipv4 options beyond hdr", frame: v4(tcpSYN, linuxSynOpts, nil), hdrLen: h4 + 4},
		{name: "ipv4 TCP header beyond hdr", frame: v4(tcpACK, nil, payload), hdrLen: h4 - 1},
		{name: "ipv4 frame shorter than its total length", frame: v4(tcpACK, nil, payload), frameLen: len(v4(tcpACK, nil, payload)) - 1},
		{name: "ipv4 cut inside the TCP header", frame: v4(tcpACK, nil, nil)[:h4-4]},
		{name: "ipv4 cut inside the IP header", frame: v4(tcpACK, nil, nil)[:14+12]},
		{name: "ipv4 bad header checksum", frame: func() []byte { f := v4(tcpACK, nil, payload); f[14+10] ^= 0x40; return f }()},
		{name: "ipv4 first fragment", frame: refragment(v4(tcpACK, nil, payload), 0x2000)},
		{name: "ipv4 later fragment", frame: refragment(v4(tcpACK, nil, payload), 0x0004)},
		{name: "ipv4 don't fragment", frame: refragment(v4(tcpACK, nil, payload), 0x4000),
			want: &want{guest4, world4, flagACK, 0, -1, h4, payload}},
		{name: "ipv4 options", frame: toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, []byte{1, 1, 1, 0}, tcpSegment(40000, 80, seq, ack, tcpACK, nil, payload), 16))},
		{name: "ipv4 version 6", frame: withIPv4Header(v4(tcpACK, nil, payload), 0, 0x65)},
		{name: "ipv4 total length below the headers", frame: func() []byte {
			f := v4(tcpACK, nil, nil)
			binary.BigEndian.PutUint16(f[14+2:], 20+19)
			return withIPv4Header(f, 3, f[14+3])
		}()},
		{name: "ipv4 UDP", frame: toGateway4(ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(40000, 80, make([]byte, 32)), 6))},
		{name: "ipv4 ICMP", frame: toGateway4(ipv4Packet(fzGuest4, fzWorld4, 1, nil, icmpMessage(8, 0, make([]byte, 32)), -1))},
		{name: "data offset below 20", frame: func() []byte {
			s := segWithWnd(40000, 80, seq, ack, tcpACK, wnd, nil, payload)
			s[12] = 4 << 4
			return toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, nil, s, 16))
		}()},
		{name: "data offset beyond the packet", frame: func() []byte {
			s := segWithWnd(40000, 80, seq, ack, tcpSYN, wnd, nil, nil)
			s[12] = 15 << 4
			return toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, nil, s, 16))
		}()},
		// The frame holds the options, but the IP packet ends before.
		{name: "data offset beyond the IP length into padding", frame: func() []byte {
			s := segWithWnd(40000, 80, seq, ack, tcpACK, wnd, nil, nil)
			s[12] = 6 << 4
			return append(toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, nil, s, 16)), make([]byte, 8)...)
		}()},

		{name: "ipv6 data", frame: v6(tcpACK|tcpPSH, nil, payload),
			want: &want{guest6, world6, flagACK | flagPSH, 0, -1, h6, payload}},
		{name: "ipv6 SYN", frame: v6(tcpSYN, linuxSynOpts, nil),
			want: &want{guest6, world6, flagSYN, 65495, 7, h6 + len(linuxSynOpts), nil}},
		{name: "ipv6 padding", frame: append(v6(tcpFIN|tcpACK, nil, nil), 1, 2, 3),
			want: &want{guest6, world6, flagFIN | flagACK, 0, -1, h6, nil}},
		{name: "ipv6 payload beyond hdr", frame: v6(tcpACK, nil, payload), hdrLen: h6,
			want: &want{guest6, world6, flagACK, 0, -1, h6, payload}},
		{name: "ipv6 payload length beyond the frame", frame: v6(tcpACK, nil, payload), frameLen: len(v6(tcpACK, nil, payload)) - 1},
		{name: "ipv6 hop-by-hop header", frame: toGateway6(ipv6Packet(fzGuest6, fzWorld6, 0, 64,
			append([]byte{6, 0, 1, 4, 0, 0, 0, 0}, tcpSegment(40000, 443, seq, ack, tcpACK, nil, payload)...), -1))},
		{name: "ipv6 UDP", frame: toGateway6(ipv6Packet(fzGuest6, fzWorld6, 17, 64, udpDatagram(40000, 443, make([]byte, 32)), 6))},
		{name: "ipv6 version 4", frame: func() []byte { f := v6(tcpACK, nil, payload); f[14] = 0x40; return f }()},
		{name: "ipv6 cut inside the TCP header", frame: v6(tcpACK, nil, nil)[:h6-1]},

		{name: "arp", frame: arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4)},
		{name: "VLAN tag", frame: ethFrame(fzGatewayMAC, fzGuestMAC, 0x8100, append([]byte{0, 5, 8, 0}, ipv4Packet(fzGuest4, fzWorld4, 6, nil, tcpSegment(1, 2, 0, 0, tcpSYN, nil, nil), 16)...))},
		{name: "runt", frame: make([]byte, 13)},
		{name: "empty", frame: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := tc.frame
			if tc.hdrLen > 0 {
				hdr = tc.frame[:tc.hdrLen]
			}
			frameLen := tc.frameLen
			if frameLen == 0 {
				frameLen = len(tc.frame)
			}
			s, ok := parseTCP(hdr, frameLen)
			if ok != (tc.want != nil) {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tc.want != nil, s)
			}
			if !ok {
				return
			}
			w := tc.want
			if s.src != w.src || s.dst != w.dst || s.seq != seq || s.ack != ack || s.flags != w.flags || s.wnd != wnd {
				t.Errorf("%v -> %v seq %#x ack %#x flags %v wnd %#x; want %v -> %v seq %#x ack %#x flags %v wnd %#x",
					s.src, s.dst, s.seq, s.ack, s.flags, s.wnd, w.src, w.dst, uint32(seq), uint32(ack), w.flags, wnd)
			}
			if s.mss != w.mss || s.wscale != w.wscale {
				t.Errorf("mss %d wscale %d, want %d %d", s.mss, s.wscale, w.mss, w.wscale)
			}
			if s.off != w.off || s.n != len(w.data) {
				t.Fatalf("payload at %d, %d bytes; want at %d, %d bytes", s.off, s.n, w.off, len(w.data))
			}
			if got := tc.frame[s.off : s.off+s.n]; !bytes.Equal(got, w.data) {
				t.Errorf("payload %q, want %q", got, w.data)
			}
		})
	}
}

func TestSynOptions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   []byte
		mss    uint16
		wscale int
	}{
		{"none", nil, 0, -1},
		{"MSS", []byte{2, 4, 0x05, 0xb4}, 1460, -1},
		{"window scale", []byte{3, 3, 9}, 0, 9},
		{"window scale 0", []byte{1, 3, 3, 0}, 0, 0},
		{"window scale 14", []byte{3, 3, 14}, 0, 14},
		{"window scale 255 is 14", []byte{3, 3, 255}, 0, 14},
		{"Linux SYN", linuxSynOpts, 65495, 7},
		{"NOPs first", []byte{1, 1, 1, 2, 4, 0x02, 0x18, 1, 3, 3, 2}, 536, 2},
		{"EOL ends the list", []byte{2, 4, 0x05, 0xb4, 0, 3, 3, 7}, 1460, -1},
		{"EOL first", []byte{0, 2, 4, 0x05, 0xb4}, 0, -1},
		{"MSS of the wrong length is skipped", []byte{2, 3, 0x05, 3, 3, 6}, 0, 6},
		{"window scale of the wrong length is skipped", []byte{3, 4, 7, 0, 2, 4, 0x05, 0xb4}, 1460, -1},
		{"unknown option skipped", []byte{254, 4, 0xde, 0xad, 3, 3, 5}, 0, 5},
		{"length below 2 stops", []byte{254, 1, 2, 4, 0x05, 0xb4}, 0, -1},
		{"length 0 stops", []byte{254, 0, 3, 3, 5}, 0, -1},
		{"option beyond the list stops", []byte{3, 3, 4, 2, 4, 0x05}, 0, 4},
		{"kind without length", []byte{1, 2}, 0, -1},
		{"SACK and timestamps only", []byte{4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0}, 0, -1},
	} {
		mss, ws := synOptions(tc.opts)
		if mss != tc.mss || ws != tc.wscale {
			t.Errorf("%s: synOptions(% x) = %d, %d; want %d, %d", tc.name, tc.opts, mss, ws, tc.mss, tc.wscale)
		}
	}
}

// tcpChecksumOK checks a TCP segment's checksum by a sum of our own (not
// gVisor's) over the pseudo-header and the whole segment.
func tcpChecksumOK(src, dst netip.Addr, seg []byte) bool {
	var pseudo uint32
	for _, a := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i < len(a); i += 2 {
			pseudo += uint32(binary.BigEndian.Uint16(a[i:]))
		}
	}
	pseudo += 6 + uint32(len(seg))
	return fzChecksum(seg, pseudo) == 0
}

// buildCases are tcpOut values for buildTCP round trips; payloads are
// random with odd lengths among them.
func buildCases(rng *rand.Rand) []struct {
	name    string
	o       tcpOut
	payload []byte
} {
	gw := tcpip.LinkAddress(fzGatewayMAC)
	guest := tcpip.LinkAddress(fzGuestMAC)
	world4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzWorld4)), 80)
	guest4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 40000)
	world6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzWorld6)), 443)
	guest6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzGuest6)), 40001)
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	base4 := tcpOut{srcMAC: gw, dstMAC: guest, src: world4, dst: guest4, seq: 0xfffffff0, ack: 0x12345678, wnd: 8192, ipID: 0x4242, synWS: -1}
	base6 := tcpOut{srcMAC: gw, dstMAC: guest, src: world6, dst: guest6, seq: 7, ack: 0x80000001, wnd: 65535, synWS: -1}
	with := func(o tcpOut, f func(*tcpOut)) tcpOut { f(&o); return o }
	type bc = struct {
		name    string
		o       tcpOut
		payload []byte
	}
	return []bc{
		{"v4 SYN-ACK with window scale", with(base4, func(o *tcpOut) { o.flags, o.synMSS, o.synWS = flagSYN|flagACK, 65480, 7 }), nil},
		{"v4 SYN-ACK without window scale", with(base4, func(o *tcpOut) { o.flags, o.synMSS = flagSYN|flagACK, 1460 }), nil},
		{"v4 ACK", with(base4, func(o *tcpOut) { o.flags = flagACK }), nil},
		{"v4 data odd length", with(base4, func(o *tcpOut) { o.flags = flagACK | flagPSH }), data(1001)},
		{"v4 data one byte", with(base4, func(o *tcpOut) { o.flags = flagACK | flagPSH }), data(1)},
		{"v4 data large", with(base4, func(o *tcpOut) { o.flags = flagACK | flagPSH }), data(40000)},
		{"v4 RST", with(base4, func(o *tcpOut) { o.flags, o.seq = flagRST|flagACK, 0 }), nil},
		{"v6 SYN-ACK with window scale", with(base6, func(o *tcpOut) { o.flags, o.synMSS, o.synWS = flagSYN|flagACK, 65460, 7 }), nil},
		{"v6 SYN-ACK without window scale", with(base6, func(o *tcpOut) { o.flags, o.synMSS = flagSYN|flagACK, 1440 }), nil},
		{"v6 data", with(base6, func(o *tcpOut) { o.flags = flagACK | flagPSH }), data(1440)},
		{"v6 data odd length", with(base6, func(o *tcpOut) { o.flags = flagACK | flagPSH }), data(333)},
		{"v6 FIN", with(base6, func(o *tcpOut) { o.flags = flagFIN | flagACK }), nil},
	}
}

// checkBuiltFrame checks the Ethernet and IP headers of frame, built
// from o, and returns its TCP segment (header and payload).
func checkBuiltFrame(t *testing.T, frame []byte, o *tcpOut, tcpLen, payload int) header.TCP {
	t.Helper()
	eth := header.Ethernet(frame)
	if eth.SourceAddress() != o.srcMAC || eth.DestinationAddress() != o.dstMAC {
		t.Errorf("MACs %v -> %v, want %v -> %v", eth.SourceAddress(), eth.DestinationAddress(), o.srcMAC, o.dstMAC)
	}
	var seg []byte
	if o.src.Addr().Is4() {
		if eth.Type() != header.IPv4ProtocolNumber {
			t.Fatalf("EtherType %#x, want IPv4", eth.Type())
		}
		ip := header.IPv4(frame[14:])
		if !ip.IsValid(len(frame)-14) || !ip.IsChecksumValid() || ip.HeaderLength() != 20 || int(ip.TotalLength()) != len(frame)-14 {
			t.Fatalf("bad IPv4 header % x (frame %d bytes)", frame[14:34], len(frame))
		}
		if ip.TransportProtocol() != header.TCPProtocolNumber || ip.TTL() != 64 || ip.Flags() != header.IPv4FlagDontFragment || ip.ID() != o.ipID {
			t.Errorf("IPv4 protocol %d TTL %d flags %d ID %#x, want TCP 64 DF %#x", ip.Protocol(), ip.TTL(), ip.Flags(), ip.ID(), o.ipID)
		}
		if ip.SourceAddress() != tcpip.AddrFrom4(o.src.Addr().As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(o.dst.Addr().As4()) {
			t.Errorf("IPv4 %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), o.src.Addr(), o.dst.Addr())
		}
		seg = ip.Payload()
	} else {
		if eth.Type() != header.IPv6ProtocolNumber {
			t.Fatalf("EtherType %#x, want IPv6", eth.Type())
		}
		ip := header.IPv6(frame[14:])
		if !ip.IsValid(len(frame)-14) || int(ip.PayloadLength()) != len(frame)-14-40 {
			t.Fatalf("bad IPv6 header % x (frame %d bytes)", frame[14:54], len(frame))
		}
		if ip.TransportProtocol() != header.TCPProtocolNumber || ip.HopLimit() != 64 {
			t.Errorf("IPv6 next header %d hop limit %d, want TCP 64", ip.NextHeader(), ip.HopLimit())
		}
		if ip.SourceAddress() != tcpip.AddrFrom16(o.src.Addr().As16()) || ip.DestinationAddress() != tcpip.AddrFrom16(o.dst.Addr().As16()) {
			t.Errorf("IPv6 %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), o.src.Addr(), o.dst.Addr())
		}
		seg = ip.Payload()
	}
	if len(seg) != tcpLen+payload {
		t.Fatalf("TCP segment of %d bytes, want %d", len(seg), tcpLen+payload)
	}
	tcp := header.TCP(seg)
	if int(tcp.DataOffset()) != tcpLen || tcp.SourcePort() != o.src.Port() || tcp.DestinationPort() != o.dst.Port() ||
		tcp.SequenceNumber() != o.seq || tcp.AckNumber() != o.ack || tcp.Flags() != o.flags || tcp.WindowSize() != o.wnd {
		t.Errorf("TCP header % x does not match %+v", seg[:tcpLen], *o)
	}
	if o.flags&flagSYN != 0 {
		opts := header.ParseSynOptions(tcp.Options(), true)
		if opts.MSS != o.synMSS || opts.WS != o.synWS || opts.SACKPermitted || opts.TS {
			t.Errorf("SYN options %+v, want MSS %d WS %d, no SACK or timestamps", opts, o.synMSS, o.synWS)
		}
	}
	return tcp
}

// TestBuildTCP: without virtio-net headers buildTCP makes a complete
// frame, full checksum included, that parseTCP reads back field for field.
func TestBuildTCP(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range buildCases(rng) {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.payload = len(tc.payload)
			o.sum = checksum.Checksum(tc.payload, 0)
			b := make([]byte, tcpHeadersMax)
			hl := buildTCP(b, &o)
			ipLen, tcpLen := 20, 20
			if o.src.Addr().Is6() {
				ipLen = 40
			}
			if o.flags&flagSYN != 0 {
				tcpLen += 4
				if o.synWS >= 0 {
					tcpLen += 4
				}
			}
			if hl != 14+ipLen+tcpLen {
				t.Fatalf("header length %d, want %d", hl, 14+ipLen+tcpLen)
			}
			frame := append(b[:hl:hl], tc.payload...)
			tcp := checkBuiltFrame(t, frame, &o, tcpLen, len(tc.payload))
			src, dst := o.src.Addr(), o.dst.Addr()
			if !tcpChecksumOK(src, dst, tcp) {
				t.Errorf("TCP checksum %#04x is wrong", tcp.Checksum())
			}
			ta, tb := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
			if !tcp.IsChecksumValid(ta, tb, checksum.Checksum(tc.payload, 0), uint16(len(tc.payload))) {
				t.Errorf("gVisor finds TCP checksum %#04x wrong", tcp.Checksum())
			}

			// parseTCP reads what the container would: swap the MACs so
			// that the frame is the container's kind.
			s, ok := parseTCP(frame, len(frame))
			if !ok {
				t.Fatal("parseTCP rejects buildTCP's frame")
			}
			wantMSS, wantWS := uint16(0), -1
			if o.flags&flagSYN != 0 {
				wantMSS, wantWS = o.synMSS, o.synWS
			}
			if s.src != o.src || s.dst != o.dst || s.seq != o.seq || s.ack != o.ack || s.flags != o.flags || s.wnd != o.wnd ||
				s.mss != wantMSS || s.wscale != wantWS || s.off != hl || s.n != len(tc.payload) {
				t.Errorf("parsed %+v from %+v (headers %d bytes)", s, o, hl)
			}
		})
	}
}

// TestBuildTCPVnet: with virtio-net headers the TCP checksum field holds
// the pseudo-header's sum for the kernel to finish (CHECKSUM_PARTIAL),
// and a payload above gsoMSS asks the kernel to segment.
func TestBuildTCPVnet(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range buildCases(rng) {
		for _, gsoMSS := range []int{0, 1000, 1440, 40000} {
			o := tc.o
			o.vnet, o.gsoMSS, o.payload = true, gsoMSS, len(tc.payload)
			b := make([]byte, tcpHeadersMax)
			hl := buildTCP(b, &o)
			frame := append(b[link.VnetHdrSize:hl:hl], tc.payload...)
			v4 := o.src.Addr().Is4()
			ipLen := 40
			if v4 {
				ipLen = 20
			}
			tcpLen := hl - link.VnetHdrSize - 14 - ipLen
			tcp := checkBuiltFrame(t, frame, &o, tcpLen, len(tc.payload))

			var want link.VnetHeader
			want.Flags = link.VnetNeedsCsum
			want.HdrLen = uint16(14 + ipLen + tcpLen)
			want.CsumStart = uint16(14 + ipLen)
			want.CsumOffset = 16
			if gsoMSS > 0 && len(tc.payload) > gsoMSS {
				want.GSOType, want.GSOSize = link.VnetGSOTCPv6, uint16(gsoMSS)
				if v4 {
					want.GSOType = link.VnetGSOTCPv4
				}
			}
			vh := b[:link.VnetHdrSize]
			got := link.VnetHeader{
				Flags: vh[0], GSOType: vh[1],
				HdrLen:    binary.LittleEndian.Uint16(vh[2:]),
				GSOSize:   binary.LittleEndian.Uint16(vh[4:]),
				CsumStart: binary.LittleEndian.Uint16(vh[6:]), CsumOffset: binary.LittleEndian.Uint16(vh[8:]),
			}
			if got != want {
				t.Errorf("%s, gsoMSS %d: virtio-net header %+v, want %+v", tc.name, gsoMSS, got, want)
			}

			ta, tb := tcpip.AddrFromSlice(o.src.Addr().AsSlice()), tcpip.AddrFromSlice(o.dst.Addr().AsSlice())
			pseudo := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ta, tb, uint16(len(tcp)))
			if tcp.Checksum() != pseudo {
				t.Errorf("%s: checksum field %#04x, want the pseudo-header's sum %#04x", tc.name, tcp.Checksum(), pseudo)
			}
			// Finish it as the kernel does (sum from csum_start, stored
			// at csum_start+csum_offset): the segment is then valid.
			seg := frame[got.CsumStart:]
			binary.BigEndian.PutUint16(seg[got.CsumOffset:], ^checksum.Checksum(seg, 0))
			if !tcpChecksumOK(o.src.Addr(), o.dst.Addr(), seg) {
				t.Errorf("%s: the checksum the kernel would finish is wrong", tc.name)
			}

			s, ok := parseTCP(frame, len(frame))
			if !ok || s.src != o.src || s.dst != o.dst || s.seq != o.seq || s.ack != o.ack || s.flags != o.flags ||
				s.off != hl-link.VnetHdrSize || s.n != len(tc.payload) {
				t.Errorf("%s: parsed %+v (ok %v), want %+v", tc.name, s, ok, o)
			}
		}
	}
}

func TestSeqCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b uint32
		lt   bool // a before b
		eq   bool
	}{
		{1, 2, true, false},
		{2, 1, false, false},
		{5, 5, false, true},
		{0xffffffff, 0, true, false}, // across the wrap
		{0, 0xffffffff, false, false},
		{0xfffffff0, 0x10, true, false},
		{0x10, 0xfffffff0, false, false},
		{0x7fffffff, 0x80000000, true, false},
		{100, 100 + 1<<31 - 1, true, false}, // the farthest b still after a
		{100 + 1<<31 - 1, 100, false, false},
	} {
		lt, leq, gt := seqLT(tc.a, tc.b), seqLEQ(tc.a, tc.b), seqGT(tc.a, tc.b)
		wantGT := !tc.lt && !tc.eq
		if lt != tc.lt || leq != (tc.lt || tc.eq) || gt != wantGT {
			t.Errorf("%#x vs %#x: LT %v LEQ %v GT %v; want %v %v %v", tc.a, tc.b, lt, leq, gt, tc.lt, tc.lt || tc.eq, wantGT)
		}
	}
}

// FuzzParseTCP: any bytes, cut into hdr and rest as the read loop does,
// and no panic; a segment found has its headers in hdr and its payload in
// the frame.
func FuzzParseTCP(f *testing.F) {
	for _, s := range fuzzFrameSeeds() {
		f.Add(s, uint8(128))
	}
	f.Add(toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, nil, tcpSegment(1, 2, 3, 4, tcpACK, nil, make([]byte, 300)), 16)), uint8(54))
	f.Add(toGateway6(ipv6Packet(fzGuest6, fzWorld6, 6, 64, tcpSegment(1, 2, 3, 4, tcpSYN, linuxSynOpts, nil), 16)), uint8(0))
	f.Fuzz(func(t *testing.T, frame []byte, cut uint8) {
		hdr := frame
		if cut > 0 && int(cut) < len(frame) {
			hdr = frame[:cut]
		}
		s, ok := parseTCP(hdr, len(frame))
		if !ok {
			return
		}
		if s.off < 14+20+20 || s.off > len(hdr) || s.n < 0 || s.off+s.n > len(frame) {
			t.Fatalf("payload at %d, %d bytes, in a %d-byte frame with %d in hdr", s.off, s.n, len(frame), len(hdr))
		}
		if s.wscale < -1 || s.wscale > 14 || s.flags&flagSYN == 0 && (s.mss != 0 || s.wscale != -1) {
			t.Fatalf("options mss %d wscale %d on flags %v", s.mss, s.wscale, s.flags)
		}
	})
}
