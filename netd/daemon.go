package netd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/portfwd"
	"github.com/rootlessnet/rootlessnet/relay"
	"github.com/rootlessnet/rootlessnet/userns"
	"github.com/rootlessnet/rootlessnet/vxlan"
)

// Plugger connects members' network namespaces to the network's bridge
// (launcher.Hub).
type Plugger interface {
	Attach(id int, memberNS *os.File, mtu int) error
	Detach(id int) error
	// Tap makes a TAP on the bridge for member id, whose frames the
	// network's process relays to the member's own TAP.
	Tap(id, mtu int) (*os.File, error)
	// UserNS opens the network's user namespace, which members join.
	UserNS() (*os.File, error)
}

// Publisher publishes ports into the network (portfwd.Engine).
type Publisher interface {
	Add(spec portfwd.Spec) (int, error)
	Remove(id int) error
	List() []portfwd.Entry
	// Auto keeps the automatic forwards (-p auto) of the member whose
	// addresses guest holds, as lister lists its sockets, until Close.
	Auto(guest portfwd.Addresses, lister portfwd.SocketLister, pubs []portfwd.Publish) io.Closer
}

// Overlay is an overlay network's tunnel (vxlan.Tunnel).
type Overlay interface {
	AddPeer(netip.AddrPort)
	RemovePeer(netip.AddrPort) bool
	Peers() []netip.AddrPort
	Stats() vxlan.Stats
}

// Daemon serves a network's control socket: members join and leave,
// their names are answered by Names, their ports published.
type Daemon struct {
	cfg   Config
	paths Paths
	hub   Plugger
	ports Publisher
	names *Names
	log   *slog.Logger
	// overlay is set before Serve for an overlay network, and gossip
	// when its hosts share names.
	overlay Overlay
	gossip  *Gossip

	ln      *net.UnixListener
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped chan struct{} // closed by a "stop" request
	stopOne sync.Once

	mu      sync.Mutex
	nextID  int
	members map[int]*member
}

type member struct {
	id    int
	info  MemberInfo
	ports []int
	conn  *userns.Conn
	// frames relays an attached member's TAP to its bridge port.
	frames *relay.Frames
	// auto keeps its -p auto forwards; autoList is what it lists with.
	auto     io.Closer
	autoList *portfwd.SockDiag
	// sendMu orders the member connection's replies and the unasked
	// stop.
	sendMu sync.Mutex
}

// NewDaemon listens on the network's control socket.
func NewDaemon(cfg Config, paths Paths, hub Plugger, ports Publisher, names *Names, log *slog.Logger) (*Daemon, error) {
	os.Remove(paths.Control()) // a crashed process's socket
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: paths.Control(), Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	ctx, cancel := context.WithCancel(context.Background())
	return &Daemon{
		cfg: cfg, paths: paths, hub: hub, ports: ports, names: names, log: log,
		ln: ln, ctx: ctx, cancel: cancel, stopped: make(chan struct{}),
		nextID: 1, members: map[int]*member{},
	}, nil
}

// SetOverlay gives an overlay network's tunnel, and its gossip (nil
// when names stay local), to the daemon; before Serve.
func (d *Daemon) SetOverlay(o Overlay, g *Gossip) { d.overlay, d.gossip = o, g }

// namesChanged tells the overlay's other hosts.
func (d *Daemon) namesChanged() {
	if d.gossip != nil {
		d.gossip.Changed()
	}
}

// Stopped is closed when `network rm` asked the network to end.
func (d *Daemon) Stopped() <-chan struct{} { return d.stopped }

// Serve accepts control connections until Close.
func (d *Daemon) Serve() error {
	for {
		uc, err := d.ln.AcceptUnix()
		if err != nil {
			if d.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: wait, as net/http does, rather
			// than spin or give up on every member to come.
			d.log.Warn("control socket: accept", "err", err)
			select {
			case <-d.ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		conn := userns.NewConn(uc)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.serveConn(conn)
		}()
	}
}

// Close stops accepting, ends every connection and waits for them.
func (d *Daemon) Close() {
	d.cancel()
	d.ln.Close()
	d.mu.Lock()
	for _, m := range d.members {
		m.conn.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// requestTimeout bounds a request's read once a connection is not a
// member's (which may idle for as long as the member lives).
const requestTimeout = 10 * time.Second

func (d *Daemon) serveConn(conn *userns.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(d.ctx, func() { conn.Close() })
	defer stop()
	var m *member
	defer func() {
		if m != nil {
			d.leave(m)
		}
	}()
	for {
		if m == nil {
			conn.SetDeadline(time.Now().Add(requestTimeout))
		}
		var req Request
		files, err := conn.Recv(&req)
		if err != nil {
			if errors.Is(err, userns.ErrMessage) {
				conn.Send(Reply{Error: err.Error()})
				continue
			}
			return
		}
		reply, send := d.handle(&m, conn, req, files)
		for _, f := range files {
			f.Close()
		}
		if err := d.send(m, conn, reply, send...); err != nil {
			return
		}
		for _, f := range send {
			f.Close()
		}
		if req.Op == "stop" && reply.Error == "" {
			d.stopOne.Do(func() { close(d.stopped) })
		}
	}
}

func (d *Daemon) send(m *member, conn *userns.Conn, reply Reply, files ...*os.File) error {
	if m != nil {
		m.sendMu.Lock()
		defer m.sendMu.Unlock()
	}
	return conn.Send(reply, files...)
}

// handle answers one request; *mp is the connection's member, once it
// joined. The files returned go with the reply.
func (d *Daemon) handle(mp **member, conn *userns.Conn, req Request, files []*os.File) (Reply, []*os.File) {
	fail := func(format string, args ...any) (Reply, []*os.File) {
		return Reply{Error: fmt.Sprintf(format, args...)}, nil
	}
	m := *mp
	switch req.Op {
	case "inspect":
		cfg := d.cfg
		r := Reply{Network: &cfg, Members: d.Members(), Pid: os.Getpid()}
		if d.overlay != nil {
			r.Overlay = &OverlayInfo{Peers: d.overlay.Peers(), Stats: d.overlay.Stats()}
			if d.gossip != nil {
				r.Overlay.Hosts = d.gossip.Hosts()
			}
		}
		return r, nil
	case "peer-add", "peer-rm":
		if d.overlay == nil {
			return fail("network %s is not an overlay (create it with --vxlan)", d.cfg.Name)
		}
		ap, err := ParsePeer(req.Peer)
		if err != nil {
			return fail("%v", err)
		}
		if req.Op == "peer-add" {
			d.overlay.AddPeer(ap)
			if d.gossip != nil {
				d.gossip.JoinLater(ap.Addr())
			}
			d.log.Info("overlay peer added", "peer", ap)
		} else if !d.overlay.RemovePeer(ap) {
			return fail("%s is not a peer of network %s", ap, d.cfg.Name)
		} else {
			d.log.Info("overlay peer removed", "peer", ap)
		}
		return Reply{}, nil
	case "join":
		if m != nil {
			return fail("this connection already joined as %s", m.info.Name)
		}
		userNS, err := d.hub.UserNS()
		if err != nil {
			return fail("opening the network's user namespace: %v", err)
		}
		m, err := d.join(req, conn)
		if err != nil {
			userNS.Close()
			return fail("%v", err)
		}
		conn.SetDeadline(time.Time{})
		*mp = m
		cfg := d.cfg
		info := m.info
		return Reply{Network: &cfg, Member: &info}, []*os.File{userNS}
	case "leave":
		if m == nil {
			return fail("leave: not a member")
		}
		d.leave(m)
		*mp = nil
		return Reply{Left: true}, nil
	case "plug":
		if m == nil {
			return fail("plug: join first")
		}
		if len(files) != 1 {
			return fail("plug: got %d descriptors, want the member's network namespace", len(files))
		}
		if err := d.hub.Attach(m.id, files[0], d.cfg.MTU); err != nil {
			return fail("plugging %s into the network: %v", m.info.Name, err)
		}
		return Reply{}, nil
	case "plugtap":
		if m == nil {
			return fail("plugtap: join first")
		}
		if len(files) != 1 {
			return fail("plugtap: got %d descriptors, want the member's TAP", len(files))
		}
		port, err := d.hub.Tap(m.id, d.cfg.MTU)
		if err != nil {
			return fail("plugging %s into the network: %v", m.info.Name, err)
		}
		// The relay owns both files; the request's copy is closed by
		// the caller.
		mine, err := dupFile(files[0])
		if err != nil {
			port.Close()
			return fail("plugtap: %v", err)
		}
		d.mu.Lock()
		m.frames = relay.NewFrames(mine, port)
		d.mu.Unlock()
		return Reply{}, nil
	case "auto":
		if m == nil {
			return fail("auto: join first")
		}
		if len(files) != 1 || len(req.Autos) == 0 {
			return fail("auto: want -p auto forms and the member's sock_diag socket")
		}
		fd, err := unix.FcntlInt(files[0].Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fail("auto: %v", err)
		}
		sd, err := portfwd.NewSockDiag(os.NewFile(uintptr(fd), "sock_diag"))
		if err != nil {
			return fail("auto: %v", err)
		}
		guest := portfwd.Addresses{Guest: m.info.Address, Guest6: m.info.Address6, Gateway: d.cfg.Gateway, Gateway6: d.cfg.Gateway6}
		d.mu.Lock()
		if m.auto != nil {
			d.mu.Unlock()
			sd.Close()
			return fail("auto: already on")
		}
		m.autoList = sd
		m.auto = d.ports.Auto(guest, sd, req.Autos)
		d.mu.Unlock()
		return Reply{}, nil
	case "publish":
		if m == nil {
			return fail("publish: join first")
		}
		if err := d.publish(m, req.Ports); err != nil {
			return fail("%v", err)
		}
		return Reply{}, nil
	case "stop":
		members := d.Members()
		if len(members) > 0 && !req.Force {
			names := make([]string, len(members))
			for i, mi := range members {
				names[i] = mi.Name
			}
			return fail("network %s has %d running member(s) (%s): stop them, or use rm -f", d.cfg.Name, len(members), strings.Join(names, ", "))
		}
		d.StopMembers()
		return Reply{}, nil
	}
	return fail("unknown request %q", req.Op)
}

// join registers a new member: its name and address checked or picked.
func (d *Daemon) join(req Request, conn *userns.Conn) (*member, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := d.nextID
	name := req.Name
	if name == "" {
		name = fmt.Sprintf("member-%d", id)
	} else if err := ValidName("member", name); err != nil {
		return nil, err
	}
	for _, o := range d.members {
		if strings.EqualFold(o.info.Name, name) {
			return nil, fmt.Errorf("the name %s is taken on network %s (by the member at %s)", name, d.cfg.Name, o.info.Address)
		}
	}
	inUse := func(a netip.Addr) bool {
		for _, o := range d.members {
			if o.info.Address == a {
				return true
			}
		}
		return false
	}
	var addr netip.Addr
	if req.IP != "" {
		a, err := netip.ParseAddr(req.IP)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("invalid --ip %q: want an IPv4 address in %s", req.IP, d.cfg.Subnet)
		}
		switch {
		case !d.cfg.Subnet.Contains(a) || a == d.cfg.Subnet.Addr() || a == lastAddr(d.cfg.Subnet):
			return nil, fmt.Errorf("--ip %s is not a host address of network %s (%s)", a, d.cfg.Name, d.cfg.Subnet)
		case a == d.cfg.Gateway || a == d.cfg.DNS:
			return nil, fmt.Errorf("--ip %s is network %s's gateway or DNS address", a, d.cfg.Name)
		case inUse(a):
			return nil, fmt.Errorf("--ip %s is in use on network %s", a, d.cfg.Name)
		}
		addr = a
	} else {
		pool := d.cfg.Subnet
		if d.cfg.IPRange.IsValid() {
			pool = d.cfg.IPRange
		}
		for i := 0; ; i++ {
			a, ok := MemberAddress(pool, i)
			if !ok || !d.cfg.Subnet.Contains(a) || a == lastAddr(d.cfg.Subnet) {
				return nil, fmt.Errorf("network %s has no free address in %s", d.cfg.Name, pool)
			}
			if !inUse(a) && a != d.cfg.Gateway && a != d.cfg.DNS {
				addr = a
				break
			}
		}
	}
	m := &member{id: id, conn: conn, info: MemberInfo{Name: name, Address: addr, Pid: req.Pid}}
	if d.cfg.Subnet6.IsValid() {
		m.info.Address6 = sameHost(d.cfg.Subnet, addr, d.cfg.Subnet6)
	}
	d.nextID++
	d.members[id] = m
	d.names.Add(name, m.info.Address, m.info.Address6)
	d.namesChanged()
	d.log.Info("member joined", "name", name, "address", addr, "pid", req.Pid)
	return m, nil
}

// ParsePeer parses a VTEP: HOST:PORT, HOST an IP address (or a host
// name, resolved now).
func ParsePeer(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		var ua *net.UDPAddr
		if ua, err = net.ResolveUDPAddr("udp", net.JoinHostPort(host, port)); err == nil && ua.Port != 0 {
			ap := ua.AddrPort()
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("invalid peer %q: want HOST:PORT, such as 192.0.2.2:4789", s)
}

// dupFile returns a non-blocking copy of a received TAP fd that the
// poller serves.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "member-tap"), nil
}

// sameHost maps a's host part in p4 into p6.
func sameHost(p4 netip.Prefix, a netip.Addr, p6 netip.Prefix) netip.Addr {
	b4, n4 := a.As4(), p4.Addr().As4()
	host := uint32(b4[0]-n4[0])<<24 | uint32(b4[1]-n4[1])<<16 | uint32(b4[2]-n4[2])<<8 | uint32(b4[3]-n4[3])
	b6 := p6.Addr().As16()
	b6[12], b6[13], b6[14], b6[15] = byte(host>>24), byte(host>>16), byte(host>>8), byte(host)
	return netip.AddrFrom16(b6)
}

func (d *Daemon) publish(m *member, specs []portfwd.Spec) error {
	var ids []int
	for _, spec := range specs {
		spec.GuestAddr = m.info.Address
		if spec.HostAddr.Is6() && !spec.HostAddr.Is4In6() && m.info.Address6.IsValid() {
			spec.GuestAddr = m.info.Address6
		}
		id, err := d.ports.Add(spec)
		if err != nil {
			for _, id := range ids {
				d.ports.Remove(id)
			}
			return fmt.Errorf("publishing %s: %w", spec, err)
		}
		ids = append(ids, id)
	}
	d.mu.Lock()
	m.ports = append(m.ports, ids...)
	d.mu.Unlock()
	return nil
}

// leave undoes a member's join: its ports, its bridge port, its name.
// The member stays listed until all of it is released, so that a member
// joining under the same name or address meanwhile is refused rather
// than losing its name or port to this cleanup.
func (d *Daemon) leave(m *member) {
	d.mu.Lock()
	ports, frames, auto, autoList := m.ports, m.frames, m.auto, m.autoList
	d.mu.Unlock()
	if auto != nil {
		auto.Close()
		autoList.Close()
	}
	if frames != nil {
		frames.Stop()
	}
	for _, id := range ports {
		d.ports.Remove(id)
	}
	if err := d.hub.Detach(m.id); err != nil {
		d.log.Warn("unplugging a member", "name", m.info.Name, "err", err)
	}
	d.names.Remove(m.info.Name)
	d.namesChanged()
	d.mu.Lock()
	delete(d.members, m.id)
	d.mu.Unlock()
	d.log.Info("member left", "name", m.info.Name, "address", m.info.Address)
}

// StopMembers asks every member to stop (rm -f, or the network's process
// stopped by a signal).
func (d *Daemon) StopMembers() {
	d.mu.Lock()
	members := make([]*member, 0, len(d.members))
	for _, m := range d.members {
		members = append(members, m)
	}
	d.mu.Unlock()
	for _, m := range members {
		m.sendMu.Lock()
		m.conn.Send(Reply{Stop: true})
		m.sendMu.Unlock()
	}
}

// Members lists the members by address.
func (d *Daemon) Members() []MemberInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	entries := d.ports.List()
	out := make([]MemberInfo, 0, len(d.members))
	for _, m := range d.members {
		info := m.info
		info.Ports = nil
		for _, en := range entries {
			g := en.Spec.GuestAddr
			if g.IsValid() && (g == m.info.Address || g == m.info.Address6) {
				p := en.Spec.String()
				if en.Source == portfwd.SourceAuto {
					p += " (auto)"
				}
				info.Ports = append(info.Ports, p)
			}
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out
}

// WaitMembers waits until no member is left, at most d.
func (d *Daemon) WaitMembers(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		d.mu.Lock()
		n := len(d.members)
		d.mu.Unlock()
		if n == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
