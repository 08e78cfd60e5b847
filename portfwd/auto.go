package portfwd

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// AutoInterval is how often Auto lists the guest's sockets: a port is
// published within about this long of the guest's listen (pasta polls
// every second).
const AutoInterval = 500 * time.Millisecond

// Socket is a socket of the guest's network namespace that serves a
// port: a listening TCP socket or a bound, unconnected UDP socket.
type Socket struct {
	Proto  Proto
	Addr   netip.Addr // the address it is bound to; IPv6 for an AF_INET6 socket
	Port   uint16
	V6Only bool // an AF_INET6 socket that takes no IPv4
}

// SocketLister lists the guest's serving sockets.
type SocketLister interface {
	Sockets() ([]Socket, error)
}

// Auto publishes, through an Engine, every port the guest serves on an
// address a published port reaches, for each automatic -p (Publish with
// Auto), on the same host port; and withdraws it once the guest's socket
// is gone. A host port that cannot be bound (in use, or below
// ip_unprivileged_port_start) is tried again at each poll and warned
// about once while the guest serves it.
type Auto struct {
	e      *Engine
	lister SocketLister
	pubs   []Publish
	// addr is the guest's: the engine's, or one member's of a network
	// (StartAutoFor), whose automatic forwards alone this Auto keeps.
	addr Addresses
	log  *slog.Logger

	// warned: the host sides already warned about, while the guest
	// serves them; listErr: the listing fails (warned once until it
	// works again). Only the polling goroutine uses them.
	warned  map[Spec]bool
	listErr bool

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// StartAuto polls lister every interval and keeps e's automatic forwards
// as pubs and the guest's sockets want them, until Close.
func StartAuto(e *Engine, lister SocketLister, pubs []Publish, interval time.Duration, log *slog.Logger) *Auto {
	a, ctx := newAuto(e, lister, pubs, log)
	go a.loop(ctx, interval)
	return a
}

// StartAutoFor is StartAuto for one guest of several behind the engine's
// link (a network's member), whose addresses are guest's Guest and
// Guest6: it keeps only the automatic forwards to those.
func StartAutoFor(e *Engine, guest Addresses, lister SocketLister, pubs []Publish, interval time.Duration, log *slog.Logger) *Auto {
	a, ctx := newAuto(e, lister, pubs, log)
	a.addr = guest
	go a.loop(ctx, interval)
	return a
}

// owns reports whether en is one of this Auto's forwards.
func (a *Auto) owns(en Entry) bool {
	if en.Source != SourceAuto {
		return false
	}
	g := en.Spec.GuestAddr
	return g.IsValid() && (g == a.addr.Guest || g == a.addr.Guest6)
}

// newAuto makes an Auto that does not poll yet.
func newAuto(e *Engine, lister SocketLister, pubs []Publish, log *slog.Logger) (*Auto, context.Context) {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Auto{e: e, lister: lister, pubs: pubs, addr: e.addr, log: log, warned: map[Spec]bool{}, cancel: cancel, done: make(chan struct{})}, ctx
}

// Close stops polling and withdraws the automatic forwards.
func (a *Auto) Close() {
	a.once.Do(func() {
		a.cancel()
		<-a.done
		for _, en := range a.e.List() {
			if a.owns(en) {
				a.e.Remove(en.ID)
			}
		}
	})
}

func (a *Auto) loop(ctx context.Context, interval time.Duration) {
	defer close(a.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		a.poll()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// poll makes the automatic forwards match the guest's sockets once.
func (a *Auto) poll() {
	socks, err := a.lister.Sockets()
	if err != nil {
		// Keep what is published: the guest's sockets are unknown.
		if !a.listErr {
			a.log.Warn("-p auto: cannot list the container's sockets; retrying", "err", err)
			a.listErr = true
		}
		return
	}
	if a.listErr {
		a.log.Info("-p auto: listing the container's sockets again")
		a.listErr = false
	}
	want := AutoSpecs(socks, a.pubs, a.addr)
	have := map[Spec]int{}
	for _, en := range a.e.List() {
		if !a.owns(en) {
			continue
		}
		if _, ok := want[en.Spec]; !ok {
			a.e.Remove(en.ID)
			a.log.Info("automatic port withdrawn: the container no longer serves it", "id", en.ID, "port", en.Spec.String())
			continue
		}
		if a.e.explicitCovers(en.Spec) {
			a.e.Remove(en.ID)
			a.log.Info("automatic port withdrawn: published explicitly", "id", en.ID, "port", en.Spec.String())
			continue
		}
		have[en.Spec] = en.ID
	}
	for spec := range a.warned {
		if _, ok := want[spec]; !ok {
			delete(a.warned, spec) // warn again if it comes back
		}
	}
	for _, spec := range sortedSpecs(want) {
		if _, ok := have[spec]; ok {
			continue
		}
		_, err := a.e.AddFrom(spec, SourceAuto)
		switch {
		case err == nil:
			delete(a.warned, spec)
		case errors.Is(err, ErrExplicit):
		case !a.warned[spec]:
			a.warned[spec] = true
			a.log.Warn("automatic port not published; retrying while the container serves it", "port", spec.String(), "err", err)
		}
	}
}

func sortedSpecs(m map[Spec]struct{}) []Spec {
	out := make([]Spec, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y Spec) int {
		return cmp.Or(cmp.Compare(x.HostPort, y.HostPort), cmp.Compare(x.Proto, y.Proto),
			x.HostAddr.Compare(y.HostAddr), x.GuestAddr.Compare(y.GuestAddr))
	})
	return out
}

// AutoSpecs is what the automatic publishes pubs make of the guest's
// sockets: for each port a socket serves on an address published ports
// reach (the guest's address of its family or the unspecified one; not
// loopback), a forward from the same port on each automatic publish's
// host address, to the guest's address of the host address's family
// when the socket takes that family, else of the other.
func AutoSpecs(socks []Socket, pubs []Publish, addr Addresses) map[Spec]struct{} {
	type key struct {
		proto Proto
		port  uint16
	}
	type reach struct{ v4, v6 bool }
	ports := map[key]reach{}
	for _, s := range socks {
		if s.Port == 0 || (s.Proto != ProtoTCP && s.Proto != ProtoUDP) {
			continue
		}
		var r reach
		a := s.Addr.WithZone("")
		switch {
		case a.Unmap().IsLoopback():
			continue
		case a.Is4() || a.Is4In6():
			a = a.Unmap()
			r.v4 = a.IsUnspecified() || a == addr.Guest
		case a.IsUnspecified():
			r.v6 = addr.Guest6.IsValid()
			r.v4 = !s.V6Only
		default:
			r.v6 = addr.Guest6.IsValid() && a == addr.Guest6
		}
		k := key{s.Proto, s.Port}
		old := ports[k]
		ports[k] = reach{old.v4 || r.v4, old.v6 || r.v6}
	}
	want := map[Spec]struct{}{}
	for _, p := range pubs {
		if !p.Auto {
			continue
		}
		host := p.HostAddr.Unmap()
		if !host.IsValid() {
			host = netip.IPv4Unspecified()
		}
		for _, proto := range p.Protos() {
			for k, r := range ports {
				if k.proto != proto {
					continue
				}
				var guest netip.Addr
				switch {
				case host.Is6() && r.v6:
					guest = addr.Guest6
				case r.v4:
					guest = addr.Guest
				case r.v6:
					guest = addr.Guest6
				default:
					continue
				}
				want[Spec{Proto: proto, HostAddr: host, HostPort: k.port, GuestAddr: guest, GuestPort: k.port}] = struct{}{}
			}
		}
	}
	return want
}
