package portfwd

// The guest side of published TCP ports, and the path around the netstack
// (--port-bypass): a connection made inside the container's network
// namespace, copied to and from the host client kernel to kernel. io.Copy
// between two *net.TCPConn splices (splice(2) through a pipe) on Linux, so
// the bytes never enter this process; rootlesskit's builtin port driver
// does the same. The guest then sees the connection come from inside its
// namespace, not from the client.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
)

// GuestDialer makes the guest side of a published TCP port's connection.
type GuestDialer interface {
	// DialGuest connects to dst for client (the host-side peer, which a
	// dialer may present to the guest as the source, as the netstack
	// does). ctx ends with the forward. The error of a refused connect
	// makes the engine reset the client.
	DialGuest(ctx context.Context, client, dst netip.AddrPort) (GuestConn, error)
}

// GuestConn is a connected guest side.
type GuestConn interface {
	// Relay copies both ways between the guest and host until both
	// directions ended, passing half-closes on and resets across, then
	// closes both. Cancelling ctx resets both.
	Relay(ctx context.Context, host *net.TCPConn)
}

// ContextDialer makes connections: launcher.Dialer, from inside the
// container's network namespace; a *net.Dialer in tests.
type ContextDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Bypass is the guest side made by d, which must return *net.TCPConn.
func Bypass(d ContextDialer) GuestDialer { return bypassDialer{d} }

type bypassDialer struct{ d ContextDialer }

func (b bypassDialer) DialGuest(ctx context.Context, _, dst netip.AddrPort) (GuestConn, error) {
	ctx, cancel := context.WithTimeout(ctx, guestDialTimeout)
	defer cancel()
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	c, err := b.d.DialContext(ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("port bypass: the dialer returned a %T, want *net.TCPConn", c)
	}
	return socketConn{tc}, nil
}

type socketConn struct{ c *net.TCPConn }

func (s socketConn) Relay(ctx context.Context, host *net.TCPConn) { relaySockets(ctx, s.c, host) }

// relaySockets is relay.Stream for two kernel sockets: io.Copy splices. A
// FIN is passed on as a half-close (CloseWrite); an error on either side
// (a reset, or a write to a reset peer) resets both, with SO_LINGER 0 so
// that the close sends RST.
func relaySockets(ctx context.Context, guest, host *net.TCPConn) {
	var resetOnce sync.Once
	reset := func() {
		resetOnce.Do(func() {
			guest.SetLinger(0)
			host.SetLinger(0)
			guest.Close()
			host.Close()
		})
	}
	stop := context.AfterFunc(ctx, reset)
	defer stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(host, guest); err != nil {
			reset()
			return
		}
		host.CloseWrite()
	}()
	if _, err := io.Copy(guest, host); err != nil {
		reset()
	} else {
		guest.CloseWrite()
	}
	wg.Wait()
	guest.Close()
	host.Close()
}
