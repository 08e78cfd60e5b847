package forwarder

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rootlessnet/rootlessnet/relay"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const maxDatagram = 65535

// HandleUDP is the stack's UDP forwarder handler. It runs on the packet
// path, so it only connects a host socket (no blocking) and starts the
// flow's goroutines. Returning false makes the stack send ICMP port
// unreachable.
func (f *Forwarder) HandleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst := addrPortOf(id.LocalAddress, id.LocalPort)
	src := addrPortOf(id.RemoteAddress, id.RemotePort)
	verdict, to := f.cfg.Policy.Translate(dst)
	if verdict == Refuse {
		f.log.Debug("udp refused", "dst", dst)
		return false
	}
	if !f.startFlow("udp") {
		return false // port unreachable: the application fails now
	}
	var host net.Conn
	if verdict == Dial {
		var err error
		host, err = f.cfg.Dialer.Dial("udp", to.String())
		if err != nil {
			f.endFlow()
			if !f.hostSocketFailed(err) {
				f.log.Debug("udp connect failed", "dst", dst, "err", err)
			}
			return false
		}
		f.hostSocketMade()
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		f.log.Debug("udp endpoint", "err", terr)
		f.endFlow()
		if host != nil {
			host.Close()
		}
		return true
	}
	guest := gonet.NewUDPConn(&wq, ep)
	var started bool
	if verdict == DNS {
		started = f.goFlow(func() { defer f.endFlow(); f.serveDNS(guest, ep, &wq) })
	} else {
		started = f.goFlow(func() { defer f.endFlow(); f.relayUDP(guest, ep, &wq, host.(*net.UDPConn), src, dst) })
	}
	if !started {
		f.endFlow()
		guest.Close()
		if host != nil {
			host.Close()
		}
	}
	return true
}

// relayUDP carries one flow both ways until it has been idle for the
// idle timeout.
func (f *Forwarder) relayUDP(guest *gonet.UDPConn, ep tcpip.Endpoint, wq *waiter.Queue, host *net.UDPConn, src, dst netip.AddrPort) {
	var closeOnce sync.Once
	closeBoth := func() {
		closeOnce.Do(func() {
			guest.Close()
			host.Close()
		})
	}
	defer closeBoth()

	idle := f.cfg.UDPIdleTimeout
	var last atomic.Int64
	var lastLen atomic.Int64
	touch := func() { last.Store(time.Now().UnixNano()) }
	touch()
	// expired reports whether the flow saw nothing for idle; a read
	// deadline that fires early only re-arms.
	expired := func() bool { return time.Since(time.Unix(0, last.Load())) >= idle }

	// Guest to host on the stack's delivering goroutine (no hand-off per
	// datagram, and no datagram processed only to be dropped at the
	// endpoint: UDP ns->host 0.49 -> 0.60 Gbit/s); idle
	// expiry is the host read loop's.
	seen := func(n int) {
		touch()
		lastLen.Store(int64(n))
	}
	stopToHost, err := relay.UDPToHost(ep, wq, host, seen)
	if err != nil {
		return
	}
	defer stopToHost()
	if f.cfg.UDPShortcut != nil {
		// The flow's later datagrams skip the stack, a burst's
		// datagrams of one size sent as one; stopToHost still drains
		// what the stack queued before.
		sink, err := relay.NewUDPBatcher(host, seen)
		if err == nil {
			defer f.cfg.UDPShortcut.AddUDPFlow(src, dst, sink)()
		}
		relay.PrepareHost(host)
	}
	runs, err := relay.NewRunReader(host)
	if err != nil {
		return
	}
	toGuest := func(run []byte, seg int, _ netip.AddrPort) {
		touch()
		if f.cfg.UDPShortcut != nil && f.cfg.UDPShortcut.WriteUDPBatch(dst, src, run, seg) {
			return
		}
		// Through the stack, which fragments what the link's MTU
		// does not hold.
		if seg == 0 || len(run) <= seg {
			guest.Write(run)
			return
		}
		for off := 0; off < len(run); off += seg {
			guest.Write(run[off:min(off+seg, len(run))])
		}
	}
	if f.cfg.UDPShortcut != nil {
		// The host socket on the read loop: its datagrams are taken as
		// soon as the loop sees them, with no goroutine to wake.
		failed := make(chan error, 1)
		onReadable := func() {
			_, err := runs.ReadQueued(toGuest, hostBurst)
			switch {
			case err == nil:
			case errors.Is(err, syscall.ECONNREFUSED):
				// The host got ICMP port unreachable: tell the
				// container the same way.
				f.portUnreachable(src, dst, int(lastLen.Load()))
			default:
				select {
				case failed <- err:
				default:
				}
			}
		}
		if unwatch, err := f.cfg.UDPShortcut.WatchHost(host, onReadable); err == nil {
			f.waitIdle(failed, &last, idle)
			unwatch() // before closeBoth closes the socket
			return
		}
	}
	stop := context.AfterFunc(f.ctx, closeBoth)
	defer stop()
	for {
		// Due when the flow will have been idle for idle, counting
		// the other direction's datagrams too (not idle after the last
		// host datagram: that kept flows up to twice as long).
		host.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		// No buffer held while idle: most flows are, most of the
		// time. The datagrams queued behind the first come with it,
		// in runs of one size.
		err := runs.ReadRuns(toGuest)
		switch {
		case err == nil:
		case errors.Is(err, syscall.ECONNREFUSED):
			// The host got ICMP port unreachable: tell the container
			// the same way.
			f.portUnreachable(src, dst, int(lastLen.Load()))
		case isTimeout(err) && !expired():
		default:
			return
		}
	}
}

// hostBurst bounds the datagrams one flow's host socket gives the read
// loop per wake-up: a flood waits its turn behind the TAP and the other
// flows.
const hostBurst = 256

// waitIdle returns once a flow served on the read loop has carried
// nothing for idle (last is when it last did, UnixNano), the forwarder
// closes, or failed says its host socket broke.
func (f *Forwarder) waitIdle(failed <-chan error, last *atomic.Int64, idle time.Duration) {
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		left := time.Until(time.Unix(0, last.Load()).Add(idle))
		if left <= 0 {
			return
		}
		t.Reset(left)
		select {
		case <-t.C:
		case <-failed:
			return
		case <-f.ctx.Done():
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
