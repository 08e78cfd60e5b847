package fastpath

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Published ports on the fast path: a host listener's connection becomes
// a flow that opens the connection to the container itself (SYN, then
// the container's SYN-ACK), from the client's address, so the container
// sees who connected, as through the netstack. From then on the flow is
// the same as an outbound one.

// Errors of DialTCP. Those that wrap ErrUnavailable say that
// the netstack should carry the connection instead.
var (
	ErrUnavailable = errors.New("the TCP fast path cannot take this connection")
	ErrRefused     = errors.New("the container refused the connection (RST)")
	ErrTimeout     = errors.New("the container did not answer")
	errDisabled    = fmt.Errorf("%w: it is off", ErrUnavailable)
	errNoGuest     = fmt.Errorf("%w: the container's MAC is not known yet", ErrUnavailable)
	errBusy        = fmt.Errorf("%w: no free source port for this client", ErrUnavailable)
	errClosed      = errors.New("the link is closing")
)

// fastDialTimeout bounds the wait for the container's SYN-ACK, as the
// netstack's dial of a published port.
const fastDialTimeout = 10 * time.Second

// DialTCP connects to the container's dst from src (a zero port: one
// is chosen) on the fast path, for the host connection host, and returns
// once the container answered: run then carries the connection until it
// ends and closes host. On error host is left to the caller.
func (p *Path) DialTCP(ctx context.Context, src, dst netip.AddrPort, host *net.TCPConn) (run func(context.Context), err error) {
	return p.tcp.dial(ctx, src, dst, host)
}

func (t *tcpTable) dial(ctx context.Context, src, dst netip.AddrPort, host *net.TCPConn) (run func(context.Context), err error) {
	if t.policy == nil {
		return nil, errDisabled
	}
	guestMAC, ok := t.link.GuestMACFor(dst.Addr())
	if !ok {
		return nil, errNoGuest
	}
	// Published flows take the queues in turn: the SYN goes out on the
	// flow's queue, which steers the container's answer there.
	q := 0
	if n := t.link.ActiveQueues(); n > 1 {
		q = int(t.nextQueue.Add(1) % uint32(n))
	}
	f := newPublishedFlow(t, q, guestMAC, dst)
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errClosed
	}
	// The client's own port when it is free (a client of two published
	// ports that reach the same guest port may repeat it), else a
	// random one.
	key := tcpFlowKey{src: dst, dst: src}
	for i := 0; src.Port() == 0 || t.flows[key] != nil; i++ {
		if i == 64 {
			t.mu.Unlock()
			return nil, errBusy
		}
		src = netip.AddrPortFrom(src.Addr(), uint16(32768+rand.IntN(28232)))
		key.dst = src
	}
	f.key = key
	f.hs.iss = t.isn(key)
	f.snd.start(f.hs.iss)
	f.snd.synSent()
	t.flows[key] = f
	t.mu.Unlock()
	t.stats.TCPFlows.Add(1)

	f.mu.Lock()
	f.hs.sendSyn()
	f.timers.arm()
	f.mu.Unlock()

	if err := f.hs.wait(ctx); err != nil {
		return nil, err
	}
	if err := f.hs.joinHost(host); err != nil {
		return nil, err
	}
	return f.carry, nil
}

// newPublishedFlow makes a published flow to the container's dst, owned
// by queue q, its key and sequence numbers still to be set.
func newPublishedFlow(t *tcpTable, q int, guestMAC tcpip.LinkAddress, dst netip.AddrPort) *tcpFlow {
	return (&tcpFlow{
		t:        t,
		guestMAC: guestMAC,
		state:    fsSynSent,
		fd:       -1,
		ended:    make(chan struct{}),
		hs:       handshake{answered: make(chan error, 1)},
		snd:      sendSide{mss: 536},
		rcv: recvSide{
			scaled: true, // offered; the SYN-ACK says whether it holds
			mss:    uint16(min(segRoom(int(t.link.MTU()), dst), 65535)),
			pend:   hostWriter{waiting: true}, // the container's data waits for the socket
		},
		timers: flowTimers{rto: fastRTOMin},
	}).wire(q)
}

// segRoom is the room for a segment's payload in an MTU's packet to or
// from addr.
func segRoom(mtu int, addr netip.AddrPort) int {
	if addr.Addr().Is6() {
		return mtu - header.IPv6MinimumSize - header.TCPMinimumSize
	}
	return mtu - header.IPv4MinimumSize - header.TCPMinimumSize
}

// wait waits for the container's answer to a published flow's SYN, at
// most fastDialTimeout, and ends the flow without one.
func (h *handshake) wait(ctx context.Context) (err error) {
	timer := time.NewTimer(fastDialTimeout)
	defer timer.Stop()
	select {
	case err = <-h.answered:
	case <-timer.C:
		err = ErrTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		h.f.mu.Lock()
		h.f.closeLocked(false, false) // the caller resets the client
		h.f.mu.Unlock()
	}
	return err
}

// joinHost ends a published flow's handshake: host, its host socket,
// joins the event loop now, out of Go's, and from here on the flow owns
// it.
func (h *handshake) joinHost(host *net.TCPConn) error {
	f := h.f
	fd, err := eventloop.DetachFD(host)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.closeLocked(true, false)
		return err
	}
	if f.isClosed() {
		unix.Close(fd)
		return errClosed
	}
	f.adoptHostLocked(fd)
	if err := f.watchHostLocked(); err != nil {
		f.closeLocked(true, true)
		return err
	}
	f.rcv.flush() // what the container sent meanwhile
	f.snd.hostReadable()
	f.snd.pumpHost()
	return nil
}

// synSent takes the container's answer to a published flow's SYN.
func (h *handshake) synSent(s *tcpSeg) {
	f := h.f
	if s.flags&flagACK == 0 {
		return // not an answer to our SYN (a simultaneous open is not one either)
	}
	if s.ack != h.iss+1 {
		if s.flags&flagRST == 0 {
			// An unacceptable ACK: reset it (RFC 9293 3.10.7.3).
			f.sendLocked(flagRST, s.ack, nil, 0)
		}
		return
	}
	switch {
	case s.flags&flagRST != 0:
		h.answer(ErrRefused)
		f.closeLocked(false, false)
	case s.flags&flagSYN != 0:
		h.irs = s.seq
		f.rcv.start(s.seq)
		f.snd.synAcked()
		if s.mss != 0 {
			f.snd.setMSS(max(min(int(s.mss), f.rcv.ourMSS()), 64))
		}
		f.rcv.scaleWindow(s.wscale >= 0)
		f.snd.peerWindow(s.wnd, s.wscale) // a SYN's window is never scaled
		f.state = fsEstablished
		f.timers.alive()
		f.timers.restart()
		f.sendAckLocked()
		h.answer(nil)
	}
}

// answer reports the end of the handshake to DialTCP, once.
func (h *handshake) answer(err error) {
	select {
	case h.answered <- err:
		h.f.runningLoop().HandOff()
	default:
	}
}
