package vxlan

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestHeader(t *testing.T) {
	frame := bytes.Repeat([]byte{0xab}, 14)
	for _, c := range []struct {
		name string
		in   []byte
		vni  uint32
		err  error
	}{
		{"vni 1", append([]byte{0x08, 0, 0, 0, 0, 0, 1, 0}, frame...), 1, nil},
		{"max vni", append([]byte{0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0}, frame...), MaxVNI, nil},
		{"reserved bits ignored", append([]byte{0x0c, 0xff, 0xff, 0xff, 0, 0, 7, 0xff}, frame...), 7, nil},
		{"no I flag", append([]byte{0x00, 0, 0, 0, 0, 0, 1, 0}, frame...), 0, ErrFlags},
		{"no frame", []byte{0x08, 0, 0, 0, 0, 0, 1, 0}, 0, ErrShort},
		{"empty", nil, 0, ErrShort},
	} {
		vni, got, err := Decode(c.in)
		if err != c.err || vni != c.vni || (err == nil && !bytes.Equal(got, frame)) {
			t.Errorf("%s: vni %d, err %v, frame %x", c.name, vni, err, got)
		}
	}
	b := make([]byte, HeaderLen)
	Encode(b, 0x123456)
	if !bytes.Equal(b, []byte{0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0}) {
		t.Errorf("Encode: %x", b)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		vni, frame, err := Decode(b)
		if err != nil {
			return
		}
		if vni > MaxVNI || len(frame) < 14 || len(frame) != len(b)-HeaderLen {
			t.Fatalf("vni %d, frame of %d from %d bytes", vni, len(frame), len(b))
		}
		out := make([]byte, HeaderLen)
		Encode(out, vni)
		if v, _, err := Decode(append(out, frame...)); err != nil || v != vni {
			t.Fatalf("re-encoded %d: %d %v", vni, v, err)
		}
	})
}

func TestFDB(t *testing.T) {
	now := time.Unix(1000, 0)
	f := NewFDB(time.Minute)
	f.now = func() time.Time { return now }
	a := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	vtep1 := netip.MustParseAddrPort("192.0.2.1:4789")
	vtep2 := netip.MustParseAddrPort("192.0.2.2:4789")
	f.Learn(a, vtep1)
	f.Learn(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, vtep1) // not learnt
	f.Learn(net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}, vtep1)                // multicast: not learnt
	if v, ok := f.Lookup(a); !ok || v != vtep1 {
		t.Fatalf("lookup: %v %v", v, ok)
	}
	if _, ok := f.Lookup(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}); ok {
		t.Fatal("broadcast found")
	}
	now = now.Add(30 * time.Second)
	f.Learn(a, vtep2) // moved
	if v, _ := f.Lookup(a); v != vtep2 {
		t.Fatalf("a moved to %v, lookup says %v", vtep2, v)
	}
	now = now.Add(61 * time.Second)
	if _, ok := f.Lookup(a); ok {
		t.Fatal("expired entry found")
	}
	f.Learn(a, vtep1)
	f.Forget(vtep1)
	if n := f.Expire(); n != 0 {
		t.Fatalf("%d entries after Forget", n)
	}
}

// tunnelEnd is a tunnel on 127.0.0.1 with a socketpair for its bridge
// port: the test writes and reads frames on the other end.
type tunnelEnd struct {
	t    *Tunnel
	addr netip.AddrPort
	port *os.File // the test's end
}

func newTunnelEnd(t *testing.T, vni uint32, local net.HardwareAddr) *tunnelEnd {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	end := &tunnelEnd{addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), port: os.NewFile(uintptr(fds[1]), "test-port")}
	end.t = Start(Config{Conn: c, Port: os.NewFile(uintptr(fds[0]), "port"), VNI: vni, Local: local}, nil)
	t.Cleanup(func() {
		end.t.Close()
		end.port.Close()
	})
	return end
}

func frameOf(dst, src net.HardwareAddr, payload string) []byte {
	return append(append(append([]byte{}, dst...), src...), append([]byte{0x88, 0xb5}, payload...)...)
}

func (e *tunnelEnd) expect(t *testing.T, want []byte) {
	t.Helper()
	e.port.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := e.port.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], want) {
		t.Fatalf("port got %x, %v; want %x", buf[:n], err, want)
	}
}

func (e *tunnelEnd) expectNothing(t *testing.T) {
	t.Helper()
	e.port.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, err := e.port.Read(buf); err == nil {
		t.Fatalf("port got %x, want nothing", buf[:n])
	}
}

func TestTunnel(t *testing.T) {
	gw := net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}
	a, b := newTunnelEnd(t, 42, gw), newTunnelEnd(t, 42, gw)
	a.t.AddPeer(b.addr)
	b.t.AddPeer(a.addr)
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	macA, macB := net.HardwareAddr{2, 0, 0, 0, 0, 0xa}, net.HardwareAddr{2, 0, 0, 0, 0, 0xb}

	// A broadcast floods; B learns macA behind A.
	f := frameOf(bcast, macA, "who has")
	a.port.Write(f)
	b.expect(t, f)
	// B's unicast answer goes to A, which learns macB.
	f = frameOf(macA, macB, "is at")
	b.port.Write(f)
	a.expect(t, f)
	if v, ok := b.t.fdb.Lookup(macA); !ok || v != a.addr {
		t.Errorf("B learnt macA behind %v %v, want %v", v, ok, a.addr)
	}
	// The gateway's frames stay home both ways.
	a.port.Write(frameOf(bcast, gw, "gateway's arp"))
	b.expectNothing(t)
	a.port.Write(frameOf(gw, macA, "to my gateway"))
	b.expectNothing(t)

	// Bad datagrams to B: counted and dropped, never crash.
	raw, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(b.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hdr := make([]byte, HeaderLen)
	Encode(hdr, 43)
	raw.Write(append(hdr, frameOf(bcast, macA, "other vni")...))
	raw.Write([]byte{0x08, 0, 0})
	raw.Write(append([]byte{0, 0, 0, 0, 0, 0, 42, 0}, frameOf(bcast, macA, "no flag")...))
	b.expectNothing(t)
	// raw's port is not A's, but its address is a peer's: accepted
	// only as the peer at A's port. VNI 43 and the rest are dropped.
	st := b.t.Stats()
	if st.DropVNI != 1 || st.DropShort != 1 || st.DropFlags != 1 {
		t.Errorf("B's stats: %+v", st)
	}
	// A stranger (not a peer's address) is dropped.
	b.t.RemovePeer(a.addr)
	a.port.Write(frameOf(macB, macA, "after removal"))
	b.expectNothing(t)
	if st := b.t.Stats(); st.DropStranger == 0 {
		t.Errorf("a datagram from a removed peer was not counted: %+v", st)
	}
	if len(b.t.Peers()) != 0 {
		t.Errorf("B's peers: %v", b.t.Peers())
	}
}
