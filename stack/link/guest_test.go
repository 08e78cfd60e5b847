package link

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// frameFrom is an Ethernet frame from mac of ethertype typ whose next
// header is l3.
func frameFrom(mac []byte, typ uint16, l3 []byte) []byte {
	f := make([]byte, 14, 14+len(l3))
	copy(f, []byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02})
	copy(f[6:], mac)
	f[12], f[13] = byte(typ>>8), byte(typ)
	return append(f, l3...)
}

func ipv4From(src netip.Addr) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	a := src.As4()
	copy(h[12:], a[:])
	copy(h[16:], []byte{10, 0, 2, 2})
	return h
}

func ipv6From(src netip.Addr) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	a := src.As16()
	copy(h[8:], a[:])
	return h
}

func arpFrom(src netip.Addr, mac []byte) []byte {
	h := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	h = append(h, mac...)
	a := src.As4()
	h = append(h, a[:]...)
	return append(h, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2)
}

func TestFrameSource(t *testing.T) {
	mac := []byte{0x02, 0, 0, 0, 0, 0x0a}
	a4 := netip.MustParseAddr("10.0.2.10")
	a6 := netip.MustParseAddr("fd00::a")
	ll6 := netip.MustParseAddr("fe80::a")
	for _, tc := range []struct {
		name  string
		frame []byte
		want  netip.Addr // invalid: none
	}{
		{"ipv4", frameFrom(mac, 0x0800, ipv4From(a4)), a4},
		{"ipv6", frameFrom(mac, 0x86dd, ipv6From(a6)), a6},
		{"ipv6 link-local", frameFrom(mac, 0x86dd, ipv6From(ll6)), ll6},
		{"arp", frameFrom(mac, 0x0806, arpFrom(a4, mac)), a4},
		{"ipv4 short", frameFrom(mac, 0x0800, ipv4From(a4)[:19]), netip.Addr{}},
		{"ipv4 says version 6", frameFrom(mac, 0x0800, append([]byte{0x65}, ipv4From(a4)[1:]...)), netip.Addr{}},
		{"ipv6 short", frameFrom(mac, 0x86dd, ipv6From(a6)[:39]), netip.Addr{}},
		{"arp short", frameFrom(mac, 0x0806, arpFrom(a4, mac)[:27]), netip.Addr{}},
		{"dhcp's unspecified source", frameFrom(mac, 0x0800, ipv4From(netip.IPv4Unspecified())), netip.Addr{}},
		{"ipv6 unspecified (DAD)", frameFrom(mac, 0x86dd, ipv6From(netip.IPv6Unspecified())), netip.Addr{}},
		{"multicast source", frameFrom(mac, 0x0800, ipv4From(netip.MustParseAddr("224.0.0.1"))), netip.Addr{}},
		{"broadcast source", frameFrom(mac, 0x0800, ipv4From(netip.MustParseAddr("255.255.255.255"))), netip.Addr{}},
		{"loopback source", frameFrom(mac, 0x0800, ipv4From(netip.MustParseAddr("127.0.0.1"))), netip.Addr{}},
		{"other ethertype", frameFrom(mac, 0x88cc, ipv4From(a4)), netip.Addr{}},
		{"ethernet header only", frameFrom(mac, 0x0800, nil), netip.Addr{}},
		{"truncated ethernet", frameFrom(mac, 0x0800, nil)[:13], netip.Addr{}},
	} {
		got, ok := FrameSource(tc.frame)
		if ok != tc.want.IsValid() || ok && got != tc.want {
			t.Errorf("%s: FrameSource = %v, %v; want %v", tc.name, got, ok, tc.want)
		}
	}
}

// TestGuestMACFor: one container's link answers with the last MAC seen
// whatever the address; a bridge's keeps each guest's, follows a guest
// whose address moves, ignores frames from multicast MACs and bounds its
// table.
func TestGuestMACFor(t *testing.T) {
	macA, macB := []byte{0x02, 0, 0, 0, 0, 0x0a}, []byte{0x02, 0, 0, 0, 0, 0x0b}
	a, b := netip.MustParseAddr("10.0.2.10"), netip.MustParseAddr("fd00::b")
	want := func(g *guestAddr, ip netip.Addr, mac []byte) {
		t.Helper()
		got, ok := g.GuestMACFor(ip)
		if mac == nil {
			if ok {
				t.Errorf("GuestMACFor(%v) = %v, want none", ip, got)
			}
			return
		}
		if !ok || got != tcpip.LinkAddress(mac) {
			t.Errorf("GuestMACFor(%v) = %v, %v; want %v", ip, got, ok, tcpip.LinkAddress(mac))
		}
	}

	var one guestAddr
	want(&one, a, nil)
	one.LearnGuest(frameFrom(macA, 0x0800, ipv4From(a)))
	one.LearnGuest(frameFrom(macB, 0x86dd, ipv6From(b)))
	want(&one, a, macB) // one container: the last MAC seen
	want(&one, b, macB)

	var br guestAddr
	br.EnableBridge()
	br.LearnGuest(frameFrom(macA, 0x0800, ipv4From(a)))
	br.LearnGuest(frameFrom(macB, 0x86dd, ipv6From(b)))
	want(&br, a, macA)
	want(&br, netip.AddrFrom16(a.As16()), macA) // an IPv4-mapped address is the IPv4 one
	want(&br, b, macB)
	want(&br, netip.MustParseAddr("10.0.2.11"), nil)
	if mac, ok := br.GuestMAC(); !ok || mac != tcpip.LinkAddress(macB) {
		t.Errorf("GuestMAC = %v, %v; want the last seen, %v", mac, ok, tcpip.LinkAddress(macB))
	}
	br.LearnGuest(frameFrom(macB, 0x0806, arpFrom(a, macB))) // a moved to B's MAC
	want(&br, a, macB)
	br.LearnGuest(frameFrom([]byte{0x03, 0, 0, 0, 0, 1}, 0x0800, ipv4From(a))) // multicast MAC: not a guest
	want(&br, a, macB)

	for i := range maxBridgeGuests + 10 {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		br.LearnGuest(frameFrom(macA, 0x0800, ipv4From(ip)))
		br.mu.RLock()
		n := len(br.byIP)
		br.mu.RUnlock()
		if n > maxBridgeGuests {
			t.Fatalf("the bridge's table holds %d guests, more than %d", n, maxBridgeGuests)
		}
	}
	last := maxBridgeGuests + 9
	want(&br, netip.AddrFrom4([4]byte{10, 1, byte(last >> 8), byte(last)}), macA) // the newest is kept
}
