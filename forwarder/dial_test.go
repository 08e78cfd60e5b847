package forwarder

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestConnectAtOnce dials through the wrapped dialer: the original Control
// hook (here: binding to 127.0.0.2, as --outbound-addr does) still runs
// first, loopback connections succeed, a closed port is refused with
// ECONNREFUSED, IPv6 works, and UDP dials are left alone.
func TestConnectAtOnce(t *testing.T) {
	var hooked int
	d := connectAtOnce(&net.Dialer{Control: func(network, _ string, c syscall.RawConn) error {
		hooked++
		if network != "tcp4" {
			return nil
		}
		var berr error
		c.Control(func(fd uintptr) {
			berr = unix.Bind(int(fd), &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 2}})
		})
		return berr
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := d.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if ip := c.LocalAddr().(*net.TCPAddr).IP.String(); ip != "127.0.0.2" {
		t.Errorf("local address %s: the binding hook did not run first", ip)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := s.Read(b); err != nil || b[0] != 'x' {
		t.Errorf("data: %q %v", b, err)
	}
	s.Close()
	c.Close()

	closed, _ := net.Listen("tcp4", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	if _, err := d.DialContext(ctx, "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to a closed port: %v, want connection refused", err)
	}

	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		defer l6.Close()
		c6, err := d.DialContext(ctx, "tcp", l6.Addr().String())
		if err != nil {
			t.Errorf("dial [::1]: %v", err)
		} else {
			c6.Close()
		}
	}

	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	cu, err := d.DialContext(ctx, "udp", u.LocalAddr().String())
	if err != nil {
		t.Fatalf("udp dial: %v", err)
	}
	cu.Close()
	if hooked < 4 {
		t.Errorf("the original Control ran %d times, want every dial", hooked)
	}
}
