package forwarder

import (
	"net/netip"

	"github.com/rootlessnet/rootlessnet/stack/fastpath"
)

// TakeTCP implements fastpath.TCPPolicy: connections the policy dials
// go on the link's TCP fast path, counted against the flow limit like
// the stack's; DNS over TCP, refused destinations and connections over
// the limit stay with the stack, which answers them as before.
func (f *Forwarder) TakeTCP(src, dst netip.AddrPort) (fastpath.TCPDial, bool) {
	verdict, to := f.cfg.Policy.Translate(dst)
	if verdict != Dial || f.ctx.Err() != nil || !f.startFlow("tcp") {
		return fastpath.TCPDial{}, false
	}
	return fastpath.TCPDial{
		To:      to,
		Control: f.cfg.Dialer.Control, // outbound binding
		Timeout: dialTimeout,
		Result: func(err error) {
			if err == nil {
				f.hostSocketMade()
				return
			}
			if !f.hostSocketFailed(err) {
				f.log.Debug("tcp connect failed", "dst", dst, "to", to, "err", err)
			}
		},
		Done: f.endFlow,
	}, true
}
