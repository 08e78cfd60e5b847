package portfwd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingDialer is a net.Dialer on loopback that counts its dials: the
// bypass's dialer stands in for the one inside the namespace.
type countingDialer struct {
	net.Dialer
	n atomic.Int32
}

func (d *countingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.n.Add(1)
	return d.Dialer.DialContext(ctx, network, address)
}

// listenGuest is the "guest" server on loopback.
func listenGuest(t *testing.T) *net.TCPListener {
	t.Helper()
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// freePort returns a loopback TCP port free right now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l := listenGuest(t)
	p := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return uint16(p)
}

func publishBypass(t *testing.T, guestPort uint16) (*countingDialer, string) {
	t.Helper()
	e := NewEngine(nil, 0, Addresses{Guest: netip.MustParseAddr("127.0.0.1")}, slog.New(slog.DiscardHandler))
	t.Cleanup(e.Close)
	d := &countingDialer{}
	e.SetGuestDialer(Bypass(d))
	for range 5 {
		hp := freePort(t)
		if _, err := e.Add(Spec{Proto: ProtoTCP, HostAddr: netip.MustParseAddr("127.0.0.1"), HostPort: hp, GuestPort: guestPort}); err == nil {
			return d, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), hp).String()
		}
	}
	t.Fatal("no free host port")
	return nil, ""
}

func dialHost(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

// TestBypassBothWaysHalfClose: 8 MiB each way with checksums; the client
// half-closes first, the server keeps sending and then half-closes.
func TestBypassBothWaysHalfClose(t *testing.T) {
	l := listenGuest(t)
	d, host := publishBypass(t, uint16(l.Addr().(*net.TCPAddr).Port))
	up := bytes.Repeat([]byte("client->guest "), 600_000)
	down := bytes.Repeat([]byte("guest->client!"), 600_000)

	srvErr := make(chan error, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(c) // until the client's half-close
		if err != nil {
			srvErr <- err
			return
		}
		if sha256.Sum256(got) != sha256.Sum256(up) {
			srvErr <- errors.New("guest received corrupted data")
			return
		}
		// The guest's side is still open for writing after the client's FIN.
		if _, err := c.Write(down); err != nil {
			srvErr <- err
			return
		}
		srvErr <- c.CloseWrite()
	}()

	c := dialHost(t, host)
	defer c.Close()
	if _, err := c.Write(up); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(down) {
		t.Errorf("client received %d bytes, want %d identical", len(got), len(down))
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	if d.n.Load() != 1 {
		t.Errorf("%d dials through the bypass, want 1", d.n.Load())
	}
}

// TestBypassGuestHalfCloseFirst: the guest sends and half-closes while
// the client is still sending; the client's data still arrives.
func TestBypassGuestHalfCloseFirst(t *testing.T) {
	l := listenGuest(t)
	_, host := publishBypass(t, uint16(l.Addr().(*net.TCPAddr).Port))
	srvErr := make(chan error, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte("hello"))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err == nil && string(got) != "and goodbye" {
			err = errors.New("guest got " + string(got))
		}
		srvErr <- err
	}()
	c := dialHost(t, host)
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v; want hello then EOF", got, err)
	}
	c.Write([]byte("and goodbye"))
	c.CloseWrite()
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
}

// TestBypassRefusedResets: nothing listens on the guest port: the client
// is reset, at once.
func TestBypassRefusedResets(t *testing.T) {
	// Held open while publishing, so that the host port is another one.
	l := listenGuest(t)
	d, host := publishBypass(t, uint16(l.Addr().(*net.TCPAddr).Port))
	l.Close()
	start := time.Now()
	// On loopback the reset may come before connect returns.
	c, err := net.DialTimeout("tcp4", host, 5*time.Second)
	if err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read: %v, want connection reset", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("reset after %v", time.Since(start))
	}
	if d.n.Load() != 1 {
		t.Errorf("%d dials, want 1", d.n.Load())
	}
}

// TestBypassGuestResetResetsClient: a guest that resets mid-stream
// resets the client.
func TestBypassGuestResetResetsClient(t *testing.T) {
	l := listenGuest(t)
	_, host := publishBypass(t, uint16(l.Addr().(*net.TCPAddr).Port))
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		c.Write([]byte("x"))
		c.SetLinger(0)
		c.Close()
	}()
	// The reset may come back before the client's connect has seen its
	// handshake complete: the connect then fails with it.
	nc, err := net.DialTimeout("tcp4", host, 5*time.Second)
	if err == nil {
		c := nc.(*net.TCPConn)
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 16)
		for err == nil {
			_, err = c.Read(buf)
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client: %v, want connection reset", err)
	}
}
