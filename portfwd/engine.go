package portfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/rootlessnet/rootlessnet/relay"
)

const (
	guestDialTimeout = 10 * time.Second
	udpFlowIdle      = 90 * time.Second
	keepAliveIdle    = 60 * time.Second
)

// Engine publishes ports: host listeners whose connections and datagrams
// enter the netstack toward the guest, from the client's own address
// (the stack spoofs it), so that the guest sees who connected, as with
// slirp4netns. Loopback and unspecified clients appear as the gateway.
// SetGuestDialer can route TCP around the stack instead (Bypass).
type Engine struct {
	st   *stack.Stack
	nic  tcpip.NICID
	addr Addresses
	log  *slog.Logger
	// tcpGuest makes the guest side of TCP connections; the netstack
	// unless SetGuestDialer changed it. Guarded by mu.
	tcpGuest GuestDialer
	// udpShortcut, when set, carries published UDP datagrams past the
	// stack both ways (SetUDPShortcut). Guarded by mu.
	udpShortcut UDPShortcut

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// addMu makes each Add, with its checks against the forwards there
	// already, one step: an explicit forward and an automatic one of the
	// same port never race for it.
	addMu sync.Mutex

	mu      sync.Mutex
	nextID  int
	entries map[int]*published
}

// Source says who asked for a forward; list_hostfwd shows it.
type Source string

// The sources of forwards.
const (
	SourceFlag Source = "flag" // -p on the command line
	SourceAPI  Source = "api"  // add_hostfwd on the API socket
	SourceAuto Source = "auto" // -p auto: the guest listens on the port
)

// ErrExplicit is the error of an automatic forward whose port or guest
// port an explicit forward (flag or API) publishes already: the explicit
// one wins.
var ErrExplicit = errors.New("published explicitly already")

var _ Forwards = (*Engine)(nil)

// Addresses are the guest's and the gateway's, per family; the IPv6 ones
// are invalid when the container has no IPv6.
type Addresses struct {
	Guest, Gateway   netip.Addr
	Guest6, Gateway6 netip.Addr
}

// NewEngine publishes into stack s, whose NIC nic faces the guest.
func NewEngine(s *stack.Stack, nic tcpip.NICID, addr Addresses, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{st: s, nic: nic, addr: addr, log: log, ctx: ctx, cancel: cancel, nextID: 1, entries: map[int]*published{}}
	e.tcpGuest = stackDialer{e}
	return e
}

// UDPShortcut is the fast path's UDP side (fastpath.Path): a flow's
// datagrams from the guest to a sink, and runs of datagrams to the guest.
type UDPShortcut interface {
	AddUDPFlow(src, dst netip.AddrPort, sink UDPSink) (remove func())
	WriteUDPBatch(src, dst netip.AddrPort, run []byte, seg int) bool
}

// UDPSink is fastpath.UDPSink.
type UDPSink = interface {
	Datagram(payload [][]byte, seg int)
	Flush()
}

// SetUDPShortcut makes the UDP forwards added from now on carry their
// datagrams past the netstack, a burst of one client's datagrams as one
// each way; the stack keeps each client's port (and what the shortcut
// cannot take: IP fragments).
func (e *Engine) SetUDPShortcut(s UDPShortcut) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.udpShortcut = s
}

// SetGuestDialer makes d the guest side of the TCP forwards added from
// now on (static and API alike); forwards already added keep theirs.
func (e *Engine) SetGuestDialer(d GuestDialer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.tcpGuest = d
}

type published struct {
	spec   Spec
	source Source
	close  func()
}

// Add implements Forwards (the API's forwards): AddFrom with SourceAPI.
func (e *Engine) Add(spec Spec) (int, error) { return e.AddFrom(spec, SourceAPI) }

// AddFrom publishes spec for src. It binds the host side now, so that a
// port in use is an error to the caller. An explicit forward (flag or
// API) first withdraws the automatic forwards of the same host port; an
// automatic one is refused with ErrExplicit where an explicit one
// publishes that host port or that guest port.
func (e *Engine) AddFrom(spec Spec, src Source) (int, error) {
	e.addMu.Lock()
	defer e.addMu.Unlock()
	if !spec.HostAddr.IsValid() {
		spec.HostAddr = netip.IPv4Unspecified()
	}
	spec.HostAddr = spec.HostAddr.Unmap()
	spec.GuestAddr = spec.GuestAddr.Unmap()
	if !spec.GuestAddr.IsValid() {
		// An IPv6 host address reaches the guest's IPv6 address when it
		// has one, else its IPv4 address.
		spec.GuestAddr = e.addr.Guest
		if spec.HostAddr.Is6() && e.addr.Guest6.IsValid() {
			spec.GuestAddr = e.addr.Guest6
		}
	}
	if spec.GuestAddr.Is6() && !e.addr.Gateway6.IsValid() {
		return 0, fmt.Errorf("guest address %s: the container has no IPv6 (start with --enable-ipv6)", spec.GuestAddr)
	}
	if err := e.yield(spec, src); err != nil {
		return 0, err
	}
	host := netip.AddrPortFrom(spec.HostAddr, spec.HostPort)
	// [::] means IPv6 only, as with docker and podman, so that 0.0.0.0
	// and [::] can both be published on the same port.
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		if !strings.HasSuffix(network, "6") {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1) }); err != nil {
			return err
		}
		return serr
	}}
	network := "4"
	if spec.HostAddr.Is6() {
		network = "6"
	}
	p := &published{spec: spec, source: src}
	switch spec.Proto {
	case "tcp":
		ln, err := lc.Listen(e.ctx, "tcp"+network, host.String())
		if err != nil {
			return 0, err
		}
		l := ln.(*net.TCPListener)
		ctx, cancel := context.WithCancel(e.ctx)
		p.close = func() { cancel(); l.Close() }
		e.mu.Lock()
		guest := e.tcpGuest
		e.mu.Unlock()
		e.goOwned(func() { e.acceptLoop(ctx, l, spec, guest) })
	case "udp":
		pc, err := lc.ListenPacket(e.ctx, "udp"+network, host.String())
		if err != nil {
			return 0, err
		}
		c := pc.(*net.UDPConn)
		relay.PrepareHost(c)
		ctx, cancel := context.WithCancel(e.ctx)
		p.close = func() { cancel(); c.Close() }
		e.mu.Lock()
		shortcut := e.udpShortcut
		e.mu.Unlock()
		e.goOwned(func() { e.udpLoop(ctx, c, spec, shortcut) })
	default:
		return 0, fmt.Errorf("unknown protocol %q", spec.Proto)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.nextID
	e.nextID++
	e.entries[id] = p
	e.log.Info("published", "id", id, "port", spec.String(), "source", src)
	return id, nil
}

// yield settles spec against the forwards there: an automatic spec gives
// way to an explicit forward (ErrExplicit), an explicit one makes the
// automatic forwards of its host port give way. e.addMu held.
func (e *Engine) yield(spec Spec, src Source) error {
	e.mu.Lock()
	if src == SourceAuto {
		defer e.mu.Unlock()
		if e.explicitCoversLocked(spec) {
			return ErrExplicit
		}
		return nil
	}
	var withdrawn []*published
	for id, p := range e.entries {
		if p.source == SourceAuto && sameHostSide(p.spec, spec) {
			delete(e.entries, id)
			withdrawn = append(withdrawn, p)
			e.log.Info("automatic port withdrawn for an explicit one", "id", id, "port", p.spec.String())
		}
	}
	e.mu.Unlock()
	for _, p := range withdrawn {
		p.close()
	}
	return nil
}

// explicitCovers reports whether an explicit forward publishes spec's
// host port or its guest port, so that an automatic spec is not wanted.
func (e *Engine) explicitCovers(spec Spec) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.explicitCoversLocked(spec)
}

func (e *Engine) explicitCoversLocked(spec Spec) bool {
	for _, p := range e.entries {
		o := p.spec
		if p.source == SourceAuto || o.Proto != spec.Proto {
			continue
		}
		if sameHostSide(o, spec) || (o.GuestPort == spec.GuestPort && o.GuestAddr == spec.GuestAddr) {
			return true
		}
	}
	return false
}

// sameHostSide: a and b cannot both be bound.
func sameHostSide(a, b Spec) bool {
	return a.Proto == b.Proto && a.HostPort == b.HostPort && addrsOverlap(a.HostAddr, b.HostAddr)
}

// Remove implements Forwards; connections already made stay up.
func (e *Engine) Remove(id int) error {
	e.mu.Lock()
	p, ok := e.entries[id]
	delete(e.entries, id)
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("no forward with id %d", id)
	}
	p.close()
	return nil
}

// List implements Forwards, in id order.
func (e *Engine) List() []Entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Entry, 0, len(e.entries))
	for id := 1; id < e.nextID; id++ {
		if p, ok := e.entries[id]; ok {
			out = append(out, Entry{ID: id, Spec: p.spec, Source: p.source})
		}
	}
	return out
}

// Close removes every forward and ends every connection.
func (e *Engine) Close() {
	e.mu.Lock()
	for id, p := range e.entries {
		p.close()
		delete(e.entries, id)
	}
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
}

func (e *Engine) goOwned(fn func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		fn()
	}()
}

// sourceFor is the address the guest sees a client as when it connects
// to dst: its own when it can be one of dst's family, else the gateway's
// (loopback clients and clients of the other family).
func (e *Engine) sourceFor(client, dst netip.Addr) netip.AddrPort {
	a := client.Unmap()
	gw := e.addr.Gateway
	if dst.Is6() {
		gw = e.addr.Gateway6
	}
	if a.IsLoopback() || a.IsUnspecified() || a.Is6() != dst.Is6() {
		return netip.AddrPortFrom(gw, 0)
	}
	return netip.AddrPortFrom(a, 0)
}

func (e *Engine) acceptLoop(ctx context.Context, l *net.TCPListener, spec Spec, guest GuestDialer) {
	var backoff time.Duration
	var warned time.Time
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if !isTemporaryAccept(err) {
				e.log.Warn("published port stopped accepting", "port", spec.String(), "err", err)
				return
			}
			// Out of fds or memory: the client stays queued in the
			// backlog, so retrying at once would spin. Wait, longer
			// each time up to 1 s, and warn once per episode.
			if backoff == 0 && time.Since(warned) > 10*time.Second {
				warned = time.Now()
				e.log.Warn("published port cannot accept for now; retrying", "port", spec.String(), "err", err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		e.goOwned(func() { e.forwardTCP(ctx, c, spec, guest) })
	}
}

func (e *Engine) forwardTCP(ctx context.Context, host *net.TCPConn, spec Spec, d GuestDialer) {
	client := host.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst := netip.AddrPortFrom(spec.GuestAddr, spec.GuestPort)
	var guest GuestConn
	var err error
	if hd, ok := d.(hostDialer); ok {
		guest, err = hd.DialGuestHost(ctx, client, dst, host)
	} else {
		guest, err = d.DialGuest(ctx, client, dst)
	}
	if err != nil {
		// The client sees what a refused connect looks like: a reset.
		e.log.Debug("published port: guest refused", "client", client, "guest", dst, "err", err)
		host.SetLinger(0)
		host.Close()
		return
	}
	guest.Relay(ctx, host)
}

// stackDialer is the default guest side: through the netstack, from the
// client's address.
type stackDialer struct{ e *Engine }

func (s stackDialer) DialGuest(ctx context.Context, client, dst netip.AddrPort) (GuestConn, error) {
	src := s.e.sourceFor(client.Addr(), dst.Addr())
	ep, wq, err := s.e.dialGuest(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	return stackConn{ep, wq}, nil
}

type stackConn struct {
	ep tcpip.Endpoint
	wq *waiter.Queue
}

func (s stackConn) Relay(ctx context.Context, host *net.TCPConn) { relay.Stream(ctx, s.ep, s.wq, host) }

// dialGuest connects from src (spoofed; port chosen by the stack) to dst
// inside the netstack and returns its endpoint and the endpoint's waiter
// queue.
func (e *Engine) dialGuest(ctx context.Context, src, dst netip.AddrPort) (tcpip.Endpoint, *waiter.Queue, error) {
	wq := new(waiter.Queue)
	ep, terr := e.st.NewEndpoint(tcp.ProtocolNumber, protoOf(dst.Addr()), wq)
	if terr != nil {
		return nil, nil, errors.New(terr.String())
	}
	if terr := ep.Bind(tcpip.FullAddress{NIC: e.nic, Addr: tcpip.AddrFromSlice(src.Addr().AsSlice()), Port: src.Port()}); terr != nil {
		ep.Close()
		return nil, nil, fmt.Errorf("binding %s: %s", src, terr)
	}
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(keepAliveIdle)
	ep.SetSockOpt(&idle)

	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(tcpip.FullAddress{NIC: e.nic, Addr: tcpip.AddrFromSlice(dst.Addr().AsSlice()), Port: dst.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		timer := time.NewTimer(guestDialTimeout)
		defer timer.Stop()
		select {
		case <-notify:
			terr = ep.LastError()
		case <-timer.C:
			terr = &tcpip.ErrTimeout{}
		case <-ctx.Done():
			terr = &tcpip.ErrAborted{}
		}
	}
	if terr != nil {
		ep.Close()
		return nil, nil, errors.New(terr.String())
	}
	return ep, wq, nil
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is6() {
		return ipv6.ProtocolNumber
	}
	return ipv4.ProtocolNumber
}

// udpFlow is one client of a published UDP port.
type udpFlow struct {
	guest *gonet.UDPConn
	// src is the client as the guest sees it (sourceFor, and the port
	// of guest).
	src netip.AddrPort
	// last is when a datagram went either way (UnixNano): the guest's
	// come on the fast path's read loop.
	last atomic.Int64
	// unshortcut ends the flow's shortcut (nil without one).
	unshortcut func()
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (e *Engine) udpLoop(ctx context.Context, host *net.UDPConn, spec Spec, shortcut UDPShortcut) {
	var mu sync.Mutex
	flows := map[netip.AddrPort]*udpFlow{}
	var flowWG sync.WaitGroup
	defer func() {
		mu.Lock()
		for _, f := range flows {
			f.guest.Close()
		}
		mu.Unlock()
		flowWG.Wait()
	}()
	dst := netip.AddrPortFrom(spec.GuestAddr, spec.GuestPort)
	flowOf := func(client netip.AddrPort) *udpFlow {
		mu.Lock()
		defer mu.Unlock()
		if f, ok := flows[client]; ok {
			return f
		}
		src := e.sourceFor(client.Addr(), dst.Addr())
		g, err := gonet.DialUDP(e.st,
			&tcpip.FullAddress{NIC: e.nic, Addr: tcpip.AddrFromSlice(src.Addr().AsSlice())},
			&tcpip.FullAddress{NIC: e.nic, Addr: tcpip.AddrFromSlice(dst.Addr().AsSlice()), Port: dst.Port()},
			protoOf(dst.Addr()))
		if err != nil {
			e.log.Debug("published UDP port: guest flow", "err", err)
			return nil
		}
		f := &udpFlow{guest: g, src: netip.AddrPortFrom(src.Addr(), uint16(g.LocalAddr().(*net.UDPAddr).Port))}
		f.touch()
		if shortcut != nil {
			// The guest's replies skip the stack, a burst's as one
			// send to the client.
			if sink, err := relay.NewUDPBatcherTo(host, client, func(int) { f.touch() }); err == nil {
				f.unshortcut = shortcut.AddUDPFlow(dst, f.src, sink)
			}
		}
		flows[client] = f
		flowWG.Add(1)
		go func() {
			defer flowWG.Done()
			e.udpBack(f, host, client, &mu, flows)
		}()
		return f
	}
	toGuest := func(run []byte, seg int, client netip.AddrPort) {
		f := flowOf(client)
		if f == nil {
			return
		}
		f.touch()
		if shortcut != nil && shortcut.WriteUDPBatch(f.src, dst, run, seg) {
			return
		}
		if seg == 0 || len(run) <= seg {
			f.guest.Write(run)
			return
		}
		for off := 0; off < len(run); off += seg {
			f.guest.Write(run[off:min(off+seg, len(run))])
		}
	}
	runs, err := relay.NewRunReader(host)
	if err != nil {
		return
	}
	for {
		// A client's datagrams queued together come as runs of one
		// size.
		if err := runs.ReadRuns(toGuest); err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				if isTransientUDP(err) {
					continue
				}
				e.log.Warn("published UDP port stopped", "port", spec.String(), "err", err)
			}
			return
		}
	}
}

// isTransientUDP tells the errors a UDP listener reports of an earlier
// send (an ICMP error queued on the socket) from its end.
func isTransientUDP(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EMSGSIZE)
}

// udpBack carries the guest's replies that come through the stack to one
// client until the flow is idle, and then ends it.
func (e *Engine) udpBack(f *udpFlow, host *net.UDPConn, client netip.AddrPort, mu *sync.Mutex, flows map[netip.AddrPort]*udpFlow) {
	g := f.guest
	defer func() {
		mu.Lock()
		if flows[client] == f {
			delete(flows, client)
		}
		mu.Unlock()
		if f.unshortcut != nil {
			f.unshortcut()
		}
		g.Close()
	}()
	buf := make([]byte, 65535)
	for {
		g.SetReadDeadline(time.Unix(0, f.last.Load()).Add(udpFlowIdle))
		n, err := g.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, f.last.Load())) < udpFlowIdle {
				continue
			}
			return
		}
		f.touch()
		host.WriteToUDPAddrPort(buf[:n], client)
	}
}
