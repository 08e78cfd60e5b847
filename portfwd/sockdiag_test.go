package portfwd

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func newTestSockDiag(t *testing.T) *SockDiag {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Skipf("no sock_diag: %v", err)
	}
	d, err := NewSockDiag(os.NewFile(uintptr(fd), "sock_diag"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestSockDiag lists this process's own loopback sockets: listening TCP
// and unconnected UDP ones appear, with V6Only, and connected UDP
// sockets and closed listeners do not.
func TestSockDiag(t *testing.T) {
	d := newTestSockDiag(t)
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	l6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer l6.Close()
	u4, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u4.Close()
	conn, err := net.Dial("udp4", u4.LocalAddr().String()) // connected: not serving
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()

	socks, err := d.Sockets()
	if err != nil {
		t.Fatal(err)
	}
	find := func(proto Proto, a netip.AddrPort) (Socket, bool) {
		for _, s := range socks {
			if s.Proto == proto && s.Addr == a.Addr() && s.Port == a.Port() {
				return s, true
			}
		}
		return Socket{}, false
	}
	ap := func(a net.Addr) netip.AddrPort {
		switch a := a.(type) {
		case *net.TCPAddr:
			return a.AddrPort()
		case *net.UDPAddr:
			return a.AddrPort()
		}
		t.Fatalf("address %v", a)
		return netip.AddrPort{}
	}
	if _, ok := find(ProtoTCP, ap(l4.Addr())); !ok {
		t.Errorf("listener %v not listed", l4.Addr())
	}
	if s, ok := find(ProtoTCP, ap(l6.Addr())); !ok || !s.V6Only {
		t.Errorf("listener %v: %+v, %v; want it listed as IPv6 only (Go sets IPV6_V6ONLY for tcp6)", l6.Addr(), s, ok)
	}
	if _, ok := find(ProtoUDP, ap(u4.LocalAddr())); !ok {
		t.Errorf("UDP socket %v not listed", u4.LocalAddr())
	}
	if _, ok := find(ProtoUDP, ap(conn.LocalAddr())); ok {
		t.Errorf("connected UDP socket %v listed", conn.LocalAddr())
	}
	if _, ok := find(ProtoTCP, ap(closed.Addr())); ok {
		t.Errorf("closed listener %v listed", closed.Addr())
	}
	// Again on the same socket: each dump is read to its end.
	if again, err := d.Sockets(); err != nil || len(again) == 0 {
		t.Errorf("second listing: %d sockets, %v", len(again), err)
	}
}

func TestSockDiagNotNetlink(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewSockDiag(f); err == nil {
		t.Error("a regular file taken as a sock_diag socket")
	}
}

func TestParseInetDiagMsg(t *testing.T) {
	if _, ok := parseInetDiagMsg(make([]byte, 10)); ok {
		t.Error("short message parsed")
	}
	b := make([]byte, inetDiagMsgLen+8)
	b[0] = unix.AF_INET6
	b[4], b[5] = 0x1f, 0x90 // 8080
	b[23] = 1               // ::1
	b[inetDiagMsgLen] = 5   // attribute: length 5, type SKV6ONLY, 1
	b[inetDiagMsgLen+2] = inetDiagSKV6Only
	b[inetDiagMsgLen+4] = 1
	s, ok := parseInetDiagMsg(b)
	if !ok || s.Port != 8080 || s.Addr != netip.IPv6Loopback() || !s.V6Only {
		t.Errorf("parsed %+v, %v", s, ok)
	}
	b[inetDiagMsgLen] = 200 // an attribute longer than the message: ignored
	if s, ok := parseInetDiagMsg(b); !ok || s.V6Only {
		t.Errorf("bad attribute: %+v, %v", s, ok)
	}
	b[0] = 99
	if _, ok := parseInetDiagMsg(b); ok {
		t.Error("unknown family parsed")
	}
}
