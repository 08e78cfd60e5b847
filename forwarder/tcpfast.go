package forwarder

import (
	"context"
	"net"
	"net/netip"
)

// TakeTCP implements stack.TCPFastPolicy: connections the policy dials
// go on the link's TCP fast path, counted against the flow limit like
// the stack's; DNS over TCP, refused destinations and connections over
// the limit stay with the stack, which answers them as before.
func (f *Forwarder) TakeTCP(src, dst netip.AddrPort) (dial func(context.Context) (*net.TCPConn, error), done func(), ok bool) {
	verdict, to := f.cfg.Policy.Translate(dst)
	if verdict != Dial || f.ctx.Err() != nil || !f.startFlow("tcp") {
		return nil, nil, false
	}
	dial = func(ctx context.Context) (*net.TCPConn, error) {
		ctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		c, err := f.tcpDialer.DialContext(ctx, "tcp", to.String())
		if err != nil {
			if !f.hostSocketFailed(err) {
				f.log.Debug("tcp connect failed", "dst", dst, "to", to, "err", err)
			}
			return nil, err
		}
		f.hostSocketMade()
		return c.(*net.TCPConn), nil
	}
	return dial, f.endFlow, true
}
