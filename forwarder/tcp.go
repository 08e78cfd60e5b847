package forwarder

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const (
	dialTimeout       = 30 * time.Second
	keepAliveIdle     = 60 * time.Second
	keepAliveInterval = 15 * time.Second
	copyBufferSize    = 32 << 10
)

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// HandleTCP is the stack's TCP forwarder handler: it runs in its own
// goroutine per SYN, dials the host first and only then accepts, so that
// a refused connect reaches the container as RST.
func (f *Forwarder) HandleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := addrPortOf(id.LocalAddress, id.LocalPort)
	verdict, to := f.cfg.Policy.Translate(dst)
	switch verdict {
	case Refuse:
		f.log.Debug("tcp refused", "dst", dst)
		r.Complete(true)
		return
	case DNS:
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
	c, err := f.cfg.Dialer.DialContext(ctx, "tcp", to.String())
	cancel()
	if err != nil {
		f.log.Debug("tcp connect failed", "dst", dst, "to", to, "err", err)
		r.Complete(true)
		return
	}
	f.acceptTCP(r, c.(*net.TCPConn))
}

func (f *Forwarder) acceptTCP(r *tcp.ForwarderRequest, host *net.TCPConn) {
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

	guest := gonet.NewTCPConn(&wq, ep)
	// The stack's forwarder gave this goroutine to the flow; register it
	// so Close can end it.
	f.wg.Add(1)
	defer f.wg.Done()
	f.relayTCP(guest, ep, host)
}

// relayTCP copies both ways until both sides are done. A FIN is passed on
// as a half-close; a reset on either side resets the other.
func (f *Forwarder) relayTCP(guest *gonet.TCPConn, ep tcpip.Endpoint, host *net.TCPConn) {
	stop := context.AfterFunc(f.ctx, func() {
		ep.Abort()
		host.SetLinger(0)
		host.Close()
	})
	defer stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := copyStream(host, guest); err != nil {
			// The container reset (or the host side failed): reset
			// the host peer rather than let it believe all arrived.
			host.SetLinger(0)
			host.Close()
			ep.Abort()
			return
		}
		host.CloseWrite()
	}()
	if err := copyStream(guest, host); err != nil {
		ep.Abort()
		host.SetLinger(0)
		host.Close()
	} else {
		guest.CloseWrite()
	}
	wg.Wait()
	guest.Close()
	host.Close()
}

// copyStream copies until EOF (nil) or an error. The wrappers hide
// ReadFrom/WriteTo so that the pooled buffer is used.
func copyStream(dst io.Writer, src io.Reader) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	return err
}
