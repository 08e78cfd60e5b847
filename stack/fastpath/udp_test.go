package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// refragment sets the IPv4 flags and fragment offset field of an
// Ethernet+IPv4 frame and fixes the header checksum.
func refragment(frame []byte, flagsOffset uint16) []byte {
	ip := frame[14:]
	binary.BigEndian.PutUint16(ip[6:], flagsOffset)
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], fzChecksum(ip[:20], 0))
	return frame
}

func TestParseUDP(t *testing.T) {
	payload := []byte("hello")
	v4 := func() []byte {
		return toGateway4(ipv4Packet(fzGuest4, fzGateway4, 17, nil, udpDatagram(5000, 53, payload), 6))
	}
	v6 := func(next uint8) []byte {
		return toGateway6(ipv6Packet(fzGuest6, fzWorld6, next, 64, udpDatagram(5000, 53, payload), 6))
	}
	guest4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 5000)
	gw4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGateway4)), 53)
	guest6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzGuest6)), 5000)
	world6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzWorld6)), 53)

	for _, tc := range []struct {
		name     string
		frame    []byte
		frameLen int // 0: len(frame)
		ok       bool
		src, dst netip.AddrPort
		off      int
	}{
		{name: "ipv4", frame: v4(), ok: true, src: guest4, dst: gw4, off: 14 + 20 + 8},
		{name: "ipv4 with Ethernet padding", frame: append(v4(), make([]byte, 20)...), ok: true, src: guest4, dst: gw4, off: 14 + 20 + 8},
		{name: "ipv4 cut short", frame: v4(), frameLen: len(v4()) - 1},
		{name: "ipv4 options", frame: toGateway4(ipv4Packet(fzGuest4, fzGateway4, 17, []byte{1, 1, 1, 0}, udpDatagram(5000, 53, payload), 6))},
		{name: "ipv4 first fragment", frame: refragment(v4(), 0x2000)},
		{name: "ipv4 later fragment", frame: refragment(v4(), 0x0010)},
		{name: "ipv4 don't fragment", frame: refragment(v4(), 0x4000), ok: true, src: guest4, dst: gw4, off: 14 + 20 + 8},
		{name: "ipv4 bad header checksum", frame: func() []byte { f := v4(); f[14+10] ^= 0xff; return f }()},
		{name: "ipv4 tcp", frame: toGateway4(ipv4Packet(fzGuest4, fzGateway4, 6, nil, tcpSegment(5000, 53, 1, 0, 0x02, nil, nil), 16))},
		{name: "udp length beyond the packet", frame: func() []byte {
			f := v4()
			binary.BigEndian.PutUint16(f[14+20+4:], uint16(8+len(payload)+1))
			return f
		}()},
		{name: "udp length below its header", frame: func() []byte {
			f := v4()
			binary.BigEndian.PutUint16(f[14+20+4:], 7)
			return f
		}()},
		{name: "ipv6", frame: v6(17), ok: true, src: guest6, dst: world6, off: 14 + 40 + 8},
		{name: "ipv6 extension header", frame: v6(0)},
		{name: "arp", frame: arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4)},
		{name: "runt", frame: v4()[:30]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frameLen := tc.frameLen
			if frameLen == 0 {
				frameLen = len(tc.frame)
			}
			src, dst, off, n, ok := parseUDP(tc.frame, frameLen)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if src != tc.src || dst != tc.dst || off != tc.off || n != len(payload) {
				t.Errorf("got %v -> %v payload at %d (%d bytes), want %v -> %v at %d (%d bytes)", src, dst, off, n, tc.src, tc.dst, tc.off, len(payload))
			}
			if got := tc.frame[off : off+n]; !bytes.Equal(got, payload) {
				t.Errorf("payload %q, want %q", got, payload)
			}
		})
	}
}

// sinkFunc is a UDPSink that flushes nothing.
type sinkFunc func(payload [][]byte, seg int)

func (f sinkFunc) Datagram(payload [][]byte, seg int) { f(payload, seg) }
func (sinkFunc) Flush()                               {}

// TestUDPShortcut sends frames through the link's read loop: datagrams
// of a registered flow reach its sink whole, whatever their size (small
// frames are one view, larger ones two), and nothing else does.
func TestUDPShortcut(t *testing.T) {
	h := newFrameHarness(t)
	world4 := []byte{198, 51, 100, 1}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 4000)
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(world4)), 7000)
	got := make(chan []byte, 16)
	remove := h.fast.AddUDPFlow(src, dst, sinkFunc(func(payload [][]byte, seg int) {
		got <- bytes.Join(payload, nil) // a copy: the pieces are lent
	}))
	datagram := func(sport, dport uint16, payload []byte) []byte {
		return toGateway4(ipv4Packet(fzGuest4, world4, 17, nil, udpDatagram(sport, dport, payload), 6))
	}
	expect := func(want []byte) {
		t.Helper()
		select {
		case b := <-got:
			if !bytes.Equal(b, want) {
				t.Fatalf("the sink got %d bytes, want %d (%q...)", len(b), len(want), b[:min(len(b), 16)])
			}
		case <-time.After(fzAliveTimeout):
			t.Fatalf("the sink got nothing")
		}
	}
	nothingMore := func() {
		t.Helper()
		h.checkAlive(t) // the read loop has handled every frame sent before
		select {
		case b := <-got:
			t.Fatalf("the sink got %d bytes it should not have", len(b))
		default:
		}
	}

	for _, size := range []int{0, 1, 100, 3000, 20000} {
		p := bytes.Repeat([]byte{byte(size)}, size)
		for i := range p {
			p[i] += byte(i)
		}
		h.send(t, datagram(4000, 7000, p))
		expect(p)
	}
	if n := h.fast.Stats().UDPShortcutIn.Load(); n != 5 {
		t.Errorf("UDPShortcutIn = %d, want 5", n)
	}

	// Another flow, and a fragment of this one, go to the stack.
	h.send(t, datagram(4001, 7000, []byte("other flow")))
	h.send(t, refragment(datagram(4000, 7000, []byte("fragment")), 0x2000))
	nothingMore()

	remove()
	remove()
	h.send(t, datagram(4000, 7000, []byte("after remove")))
	nothingMore()
	if n := h.fast.Stats().UDPShortcutIn.Load(); n != 5 {
		t.Errorf("UDPShortcutIn = %d after the flow was removed, want 5", n)
	}
}

// TestWriteUDP has the link make host datagrams into frames for the
// container: valid headers and checksums, the learned MAC, and a refusal
// (the caller then uses the stack) before the MAC is known, across
// families and above the MTU.
func TestWriteUDP(t *testing.T) {
	h := newFrameHarness(t)
	gw4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGateway4)), 53)
	guest4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 5000)
	world6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzWorld6)), 443)
	guest6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte(fzGuest6)), 5001)
	payload := []byte("a host's answer")

	if h.fast.WriteUDP(gw4, guest4, payload) {
		t.Fatal("WriteUDP took a datagram before the container's MAC was known")
	}
	// Any frame from the container teaches the link its MAC (port 7 is
	// odd: the harness answers port unreachable).
	h.send(t, toGateway4(ipv4Packet(fzGuest4, fzGateway4, 17, nil, udpDatagram(5000, 7, []byte("hi")), 6)))
	deadline := time.Now().Add(fzAliveTimeout)
	for mac, ok := h.link.GuestMAC(); !ok || string(mac) != string(fzGuestMAC); mac, ok = h.link.GuestMAC() {
		if time.Now().After(deadline) {
			t.Fatal("the link never learned the container's MAC")
		}
		time.Sleep(time.Millisecond)
	}

	if h.fast.WriteUDP(gw4, guest6, payload) {
		t.Error("WriteUDP took a datagram from IPv4 to IPv6")
	}
	if h.fast.WriteUDP(gw4, guest4, make([]byte, int(h.link.MTU())-28+1)) {
		t.Error("WriteUDP took a datagram larger than the MTU")
	}
	for _, tc := range []struct {
		src, dst netip.AddrPort
		payload  []byte
	}{
		{gw4, guest4, payload},
		{world6, guest6, payload},
		{gw4, guest4, nil},
		{gw4, guest4, bytes.Repeat([]byte{0xff}, int(h.link.MTU())-28)}, // the largest that fits
	} {
		if !h.fast.WriteUDP(tc.src, tc.dst, tc.payload) {
			t.Fatalf("WriteUDP %v -> %v (%d bytes) was refused", tc.src, tc.dst, len(tc.payload))
		}
		var f []byte
		for f == nil {
			select {
			case got := <-h.udpFrames:
				// Skip the port unreachable answer's kin: only ours
				// goes to tc.dst's port.
				if udpDstPort(got) == tc.dst.Port() {
					f = got
				}
			case <-time.After(fzAliveTimeout):
				t.Fatalf("no frame for %v (link stats tx=%d txerr=%d out=%d)", tc.dst, h.link.Stats().TxFrames.Load(), h.link.Stats().TxErrors.Load(), h.fast.Stats().UDPShortcutOut.Load())
			}
		}
		eth := header.Ethernet(f)
		if string(eth.DestinationAddress()) != string(fzGuestMAC) || string(eth.SourceAddress()) != string(fzGatewayMAC) {
			t.Errorf("MACs %v -> %v, want %v -> %v", eth.SourceAddress(), eth.DestinationAddress(), tcpip.LinkAddress(fzGatewayMAC), tcpip.LinkAddress(fzGuestMAC))
		}
		var src, dst tcpip.Address
		var u header.UDP
		if tc.src.Addr().Is4() {
			ip := header.IPv4(f[14:])
			if !ip.IsValid(len(f)-14) || !ip.IsChecksumValid() || ip.TTL() == 0 {
				t.Fatalf("bad IPv4 header % x", f[14:34])
			}
			src, dst, u = ip.SourceAddress(), ip.DestinationAddress(), header.UDP(ip.Payload())
		} else {
			ip := header.IPv6(f[14:])
			if !ip.IsValid(len(f)-14) || ip.HopLimit() == 0 {
				t.Fatalf("bad IPv6 header % x", f[14:54])
			}
			src, dst, u = ip.SourceAddress(), ip.DestinationAddress(), header.UDP(ip.Payload())
		}
		if src.String() != tc.src.Addr().String() || dst.String() != tc.dst.Addr().String() ||
			u.SourcePort() != tc.src.Port() || u.DestinationPort() != tc.dst.Port() {
			t.Errorf("datagram %v:%d -> %v:%d, want %v -> %v", src, u.SourcePort(), dst, u.DestinationPort(), tc.src, tc.dst)
		}
		if int(u.Length()) != len(u) || !bytes.Equal(u.Payload(), tc.payload) {
			t.Errorf("UDP length %d of %d bytes, payload %d bytes, want %d", u.Length(), len(u), len(u.Payload()), len(tc.payload))
		}
		if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
			t.Errorf("bad UDP checksum %#04x", u.Checksum())
		}
	}
	if n := h.fast.Stats().UDPShortcutOut.Load(); n != 4 {
		t.Errorf("UDPShortcutOut = %d, want 4", n)
	}
}

// udpDstPort is the destination port of a frame isUDPFrame accepted.
func udpDstPort(f []byte) uint16 {
	off := 14 + 40
	if binary.BigEndian.Uint16(f[12:]) == 0x0800 {
		off = 14 + int(f[14]&0xf)*4
	}
	return binary.BigEndian.Uint16(f[off+2:])
}

// FuzzParseUDP: any bytes, no panic, and a payload found lies inside the
// frame, after the headers.
func FuzzParseUDP(f *testing.F) {
	f.Add(toGateway4(ipv4Packet(fzGuest4, fzGateway4, 17, nil, udpDatagram(5000, 53, []byte("hello")), 6)), 0)
	f.Add(toGateway6(ipv6Packet(fzGuest6, fzWorld6, 17, 64, udpDatagram(5000, 53, []byte("hello")), 6)), 3)
	f.Add(refragment(toGateway4(ipv4Packet(fzGuest4, fzGateway4, 17, nil, udpDatagram(1, 2, nil), 6)), 0x2000), 0)
	f.Fuzz(func(t *testing.T, frame []byte, extra int) {
		// extra stands for bytes of the frame beyond its first view.
		frameLen := len(frame) + max(0, extra%70000)
		_, _, off, n, ok := parseUDP(frame, frameLen)
		if !ok {
			return
		}
		if off < header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize || n < 0 || off+n > frameLen {
			t.Fatalf("payload at %d, %d bytes, in a %d-byte frame", off, n, frameLen)
		}
	})
}

// TestWriteUDPBridge: on a bridge's port (several guests behind the
// TAP) the link learns each guest's MAC by its address, and WriteUDP
// sends each guest's datagrams to that guest's MAC, not to the last
// guest heard from; a guest not heard from yet is refused (the caller
// then sends through the stack, which resolves it), and a guest whose
// address moves to another MAC is followed.
func TestWriteUDPBridge(t *testing.T) {
	h := newFrameHarness(t)
	h.link.EnableBridge()
	gw4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGateway4)), 53)
	type guest struct{ mac, ip []byte }
	a := guest{[]byte{0x02, 0, 0, 0, 0, 0x0a}, []byte{10, 0, 2, 10}}
	b := guest{[]byte{0x02, 0, 0, 0, 0, 0x0b}, []byte{10, 0, 2, 11}}
	addrOf := func(g guest, port uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(g.ip)), port)
	}
	hello := func(g guest) {
		t.Helper()
		h.send(t, ethFrame(fzGatewayMAC, g.mac, 0x0800, ipv4Packet(g.ip, fzGateway4, 17, nil, udpDatagram(5000, 7, []byte("hi")), 6)))
		deadline := time.Now().Add(fzAliveTimeout)
		for mac, ok := h.link.GuestMACFor(addrOf(g, 0).Addr()); !ok || string(mac) != string(g.mac); mac, ok = h.link.GuestMACFor(addrOf(g, 0).Addr()) {
			if time.Now().After(deadline) {
				t.Fatalf("the link never learned %v's MAC", addrOf(g, 0).Addr())
			}
			time.Sleep(time.Millisecond)
		}
	}
	// sendTo writes a datagram to g's port and returns the destination
	// MAC of the frame that carried it.
	sendTo := func(g guest, port uint16) []byte {
		t.Helper()
		if !h.fast.WriteUDP(gw4, addrOf(g, port), []byte("for you")) {
			t.Fatalf("WriteUDP to %v was refused", addrOf(g, port))
		}
		for {
			select {
			case f := <-h.udpFrames:
				if udpDstPort(f) == port {
					return []byte(header.Ethernet(f).DestinationAddress())
				}
			case <-time.After(fzAliveTimeout):
				t.Fatalf("no frame for %v", addrOf(g, port))
			}
		}
	}

	hello(a)
	hello(b)
	if h.fast.WriteUDP(gw4, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 2, 12}), 5000), []byte("x")) {
		t.Error("WriteUDP took a datagram for a guest never heard from")
	}
	for i, g := range []guest{a, b, a} {
		if got := sendTo(g, uint16(6000+i)); !bytes.Equal(got, g.mac) {
			t.Errorf("datagram for %v went to MAC % x, want % x", addrOf(g, 0).Addr(), got, g.mac)
		}
	}
	moved := guest{[]byte{0x02, 0, 0, 0, 0, 0x0c}, a.ip}
	hello(moved)
	if got := sendTo(moved, 6010); !bytes.Equal(got, moved.mac) {
		t.Errorf("after the address moved, the datagram went to MAC % x, want % x", got, moved.mac)
	}
	if got := sendTo(b, 6011); !bytes.Equal(got, b.mac) {
		t.Errorf("datagram for %v went to MAC % x, want % x", addrOf(b, 0).Addr(), got, b.mac)
	}
}
