package forwarder

import (
	"context"
	"net"
	"time"

	"github.com/rootlessnet/rootlessnet/relay"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const (
	dialTimeout       = 30 * time.Second
	keepAliveIdle     = 60 * time.Second
	keepAliveInterval = 15 * time.Second
)

// HandleTCP is the stack's TCP forwarder handler: it runs in its own
// goroutine per SYN, dials the host first and only then accepts, so that
// a refused connect reaches the container as RST.
func (f *Forwarder) HandleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := addrPortOf(id.LocalAddress, id.LocalPort)
	verdict, to := f.cfg.Policy.Translate(dst)
	if verdict != Refuse {
		if !f.startFlow("tcp") {
			r.Complete(true) // RST: the application fails now, not after SYN retries
			return
		}
		// This goroutine carries the flow to its end.
		defer f.endFlow()
	}
	switch verdict {
	case Refuse:
		f.log.Debug("tcp refused", "dst", dst)
		r.Complete(true)
		return
	case DNS:
		if f.cfg.Names != nil {
			// Members' names are answered here: one message at a time
			// rather than a byte relay to an upstream.
			f.serveDNSTCPNames(r)
			return
		}
		host, err := f.dialDNSTCP()
		if err != nil {
			// No upstream takes TCP: answer SERVFAIL rather than
			// leave the resolver to time out.
			f.log.Debug("dns over tcp: no upstream", "err", err)
			f.serveDNSTCPFailure(r)
			return
		}
		f.acceptTCP(r, host)
		return
	}
	ctx, cancel := context.WithTimeout(f.ctx, dialTimeout)
	c, err := f.tcpDialer.DialContext(ctx, "tcp", to.String())
	cancel()
	if err != nil {
		if !f.hostSocketFailed(err) {
			f.log.Debug("tcp connect failed", "dst", dst, "to", to, "err", err)
		}
		r.Complete(true)
		return
	}
	f.hostSocketMade()
	f.acceptTCP(r, c.(*net.TCPConn))
}

func (f *Forwarder) acceptTCP(r *tcp.ForwarderRequest, host *net.TCPConn) {
	id := r.ID() // r is spent after Complete
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		f.log.Debug("tcp endpoint", "err", terr)
		host.Close()
		r.Complete(true)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(keepAliveIdle)
	ep.SetSockOpt(&idle)
	intvl := tcpip.KeepaliveIntervalOption(keepAliveInterval)
	ep.SetSockOpt(&intvl)

	// The stack's forwarder gave this goroutine to the flow; register it
	// so Close can end it.
	if !f.addFlow() {
		ep.Abort()
		host.Close()
		return
	}
	defer f.wg.Done()
	if err := relay.Stream(f.ctx, ep, &wq, host); err != nil {
		f.log.Debug("tcp flow reset", "dst", addrPortOf(id.LocalAddress, id.LocalPort), "err", err)
	}
}
