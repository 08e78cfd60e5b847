package portfwd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// FastLink carries published TCP past the netstack: the link's TCP fast
// path (fastpath.Path.DialTCP), which opens the connection to the
// guest from the client's address itself.
type FastLink interface {
	// DialTCPFast connects from src to the guest's dst for host and
	// returns, once the guest answered, the function that carries the
	// connection to its end (and closes host).
	DialTCPFast(ctx context.Context, src, dst netip.AddrPort, host *net.TCPConn) (run func(context.Context), err error)
}

// FastDialer is the guest side of TCP forwards on link's fast path. The
// guest sees the client's address as through the netstack; when the
// fast path cannot take a connection (off, or the guest's MAC not yet
// known), the netstack carries it.
func (e *Engine) FastDialer(link FastLink) GuestDialer { return fastDialer{e: e, link: link} }

// ErrFastUnavailable is what a FastLink returns when the netstack should
// carry the connection instead.
var ErrFastUnavailable = errors.New("fast path unavailable")

type fastDialer struct {
	e    *Engine
	link FastLink
}

// hostDialer is a GuestDialer that needs the host connection to dial.
type hostDialer interface {
	DialGuestHost(ctx context.Context, client, dst netip.AddrPort, host *net.TCPConn) (GuestConn, error)
}

// DialGuest implements GuestDialer for callers without the host
// connection: the netstack.
func (d fastDialer) DialGuest(ctx context.Context, client, dst netip.AddrPort) (GuestConn, error) {
	return stackDialer{d.e}.DialGuest(ctx, client, dst)
}

func (d fastDialer) DialGuestHost(ctx context.Context, client, dst netip.AddrPort, host *net.TCPConn) (GuestConn, error) {
	src := netip.AddrPortFrom(d.e.sourceFor(client.Addr(), dst.Addr()).Addr(), client.Port())
	run, err := d.link.DialTCPFast(ctx, src, dst, host)
	if errors.Is(err, ErrFastUnavailable) && d.e.resolveGuest(ctx, dst.Addr()) {
		// A quiet container: its ARP or neighbour reply taught the
		// link its MAC, so the first connection need not take the
		// netstack.
		run, err = d.link.DialTCPFast(ctx, src, dst, host)
	}
	if errors.Is(err, ErrFastUnavailable) {
		return stackDialer{d.e}.DialGuest(ctx, client, dst)
	}
	if err != nil {
		return nil, err
	}
	return fastConn{run}, nil
}

type fastConn struct{ run func(context.Context) }

func (c fastConn) Relay(ctx context.Context, _ *net.TCPConn) { c.run(ctx) }

// resolveGuest asks the container for its MAC (ARP or neighbour
// solicitation through the netstack) and reports whether it answered
// within a second.
func (e *Engine) resolveGuest(ctx context.Context, a netip.Addr) bool {
	gw := e.addr.Gateway
	if a.Is6() {
		gw = e.addr.Gateway6
	}
	done := make(chan stack.LinkResolutionResult, 1)
	terr := e.st.GetLinkAddress(e.nic, tcpip.AddrFromSlice(a.AsSlice()), tcpip.AddrFromSlice(gw.AsSlice()), protoOf(a),
		func(r stack.LinkResolutionResult) { done <- r })
	if _, wait := terr.(*tcpip.ErrWouldBlock); terr != nil && !wait {
		return false
	}
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	select {
	case r := <-done:
		return r.Err == nil
	case <-ctx.Done():
	case <-timer.C:
	}
	return false
}
