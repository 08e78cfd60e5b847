package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
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

// TestUDPShortcut sends frames through the link's read loop: datagrams
// of a registered flow reach its sink whole, whatever their size (small
// frames are one view, larger ones two), and nothing else does.
func TestUDPShortcut(t *testing.T) {
	h := newFrameHarness(t)
	world4 := []byte{198, 51, 100, 1}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 4000)
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(world4)), 7000)
	got := make(chan []byte, 16)
	remove := h.link.AddUDPFlow(src, dst, func(payload [][]byte) {
		got <- bytes.Join(payload, nil) // a copy: the pieces are lent
	})
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
	if n := h.link.Stats().UDPShortcut.Load(); n != 5 {
		t.Errorf("UDPShortcut = %d, want 5", n)
	}

	// Another flow, and a fragment of this one, go to the stack.
	h.send(t, datagram(4001, 7000, []byte("other flow")))
	h.send(t, refragment(datagram(4000, 7000, []byte("fragment")), 0x2000))
	nothingMore()

	remove()
	remove()
	h.send(t, datagram(4000, 7000, []byte("after remove")))
	nothingMore()
	if n := h.link.Stats().UDPShortcut.Load(); n != 5 {
		t.Errorf("UDPShortcut = %d after the flow was removed, want 5", n)
	}
}
