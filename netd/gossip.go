package netd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultGossipPort is memberlist's, and Docker swarm's, gossip port.
const DefaultGossipPort = 7946

// Gossip shares an overlay's member names among its hosts with
// hashicorp/memberlist (failure detection, joins and full state exchanges
// done right are not worth writing again): each host's table travels in
// memberlist's push/pull exchanges and is sent to every host over TCP when
// it changes; a host that leaves or fails takes its names with it.
type Gossip struct {
	ml    *memberlist.Memberlist
	names *Names
	self  string
	log   *slog.Logger
	port  uint16

	mu      sync.Mutex
	version uint64
	seen    map[string]uint64 // host -> newest version applied

	// kick asks the sender to send this host's table, joins to join a
	// peer's gossip; done ends it.
	kick  chan struct{}
	joins chan netip.Addr
	done  chan struct{}
	wg    sync.WaitGroup
}

// gossipState is one host's table.
type gossipState struct {
	Host    string                  `json:"host"`
	Version uint64                  `json:"version"`
	Members map[string][]netip.Addr `json:"members"`
}

// StartGossip binds memberlist on bind (an unspecified address advertises
// the one that routes to the first peer) and joins the peers' gossip at
// their addresses on the same port. Peers that do not answer yet are
// joined later through their own join, or by Join.
func StartGossip(bind netip.AddrPort, peers []netip.Addr, names *Names, logger *slog.Logger) (*Gossip, error) {
	g := &Gossip{names: names, log: logger, port: bind.Port(), seen: map[string]uint64{}, kick: make(chan struct{}, 1), joins: make(chan netip.Addr, 16), done: make(chan struct{})}
	cfg := memberlist.DefaultLANConfig()
	cfg.BindAddr = bind.Addr().String()
	cfg.BindPort = int(bind.Port())
	cfg.AdvertisePort = int(bind.Port())
	advertise := bind.Addr()
	if advertise.IsUnspecified() && len(peers) > 0 {
		a, err := routeTo(peers[0])
		if err != nil {
			return nil, fmt.Errorf("gossip: the address that reaches %s: %w", peers[0], err)
		}
		advertise = a
	}
	if !advertise.IsUnspecified() {
		cfg.AdvertiseAddr = advertise.String()
	}
	g.self = netip.AddrPortFrom(advertise, bind.Port()).String()
	cfg.Name = g.self
	cfg.PushPullInterval = 5 * time.Second
	cfg.Delegate = g
	cfg.Events = g
	cfg.Logger = log.New(slogWriter{logger}, "", 0)
	ml, err := memberlist.Create(cfg)
	if err != nil {
		return nil, fmt.Errorf("gossip on %s: %w", bind, err)
	}
	g.ml = ml
	for _, p := range peers {
		g.Join(p)
	}
	g.wg.Add(1)
	go g.sender()
	return g, nil
}

// sender sends this host's table to the others each time it changed,
// off the daemon's request path (a send to a host that went away waits
// for memberlist's TCP timeout).
func (g *Gossip) sender() {
	defer g.wg.Done()
	for {
		select {
		case <-g.done:
			return
		case <-g.kick:
			g.sendAll()
		case p := <-g.joins:
			g.Join(p)
		}
	}
}

// routeTo returns the local address the kernel would use towards a.
func routeTo(a netip.Addr) (netip.Addr, error) {
	c, err := net.Dial("udp", netip.AddrPortFrom(a, 9).String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// Join asks the gossip of the host at peer (on this gossip's port) to
// take this host in; a failure is logged: memberlist keeps no list of
// hosts to retry, but a peer that comes up joins this one itself.
func (g *Gossip) Join(peer netip.Addr) {
	addr := netip.AddrPortFrom(peer, g.port).String()
	if _, err := g.ml.Join([]string{addr}); err != nil {
		g.log.Debug("gossip: join", "peer", addr, "err", err)
	}
}

// JoinLater has the sender join peer's gossip, off the caller's path (a
// join waits for memberlist's TCP timeout when no host answers).
func (g *Gossip) JoinLater(peer netip.Addr) {
	select {
	case g.joins <- peer:
	default:
		g.log.Debug("gossip: joins queued already; this one is left to the peer's own join", "peer", peer)
	}
}

// Changed has this host's table sent to every other host soon.
func (g *Gossip) Changed() {
	select {
	case g.kick <- struct{}{}:
	default: // a send is due already; it takes the newest table
	}
}

func (g *Gossip) sendAll() {
	msg := g.LocalState(false)
	for _, n := range g.ml.Members() {
		if n.Name == g.self {
			continue
		}
		if err := g.ml.SendReliable(n, msg); err != nil {
			g.log.Debug("gossip: sending the names", "host", n.Name, "err", err)
		}
	}
}

// Hosts lists the hosts the gossip knows alive, this one included.
func (g *Gossip) Hosts() []string {
	var out []string
	for _, n := range g.ml.Members() {
		out = append(out, n.Name)
	}
	return out
}

// Close leaves the gossip (the others drop this host's names at once).
func (g *Gossip) Close() {
	close(g.done)
	g.wg.Wait()
	g.ml.Leave(time.Second)
	g.ml.Shutdown()
}

func (g *Gossip) apply(b []byte) {
	var st gossipState
	if err := json.Unmarshal(b, &st); err != nil || st.Host == "" || st.Host == g.self {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if v, ok := g.seen[st.Host]; ok && st.Version <= v {
		return
	}
	g.seen[st.Host] = st.Version
	g.names.SetRemote(st.Host, st.Members)
}

// memberlist.Delegate

func (g *Gossip) NodeMeta(limit int) []byte { return nil }

// NotifyMsg takes a table sent with SendReliable.
func (g *Gossip) NotifyMsg(b []byte) { g.apply(b) }

func (g *Gossip) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState is this host's table, with a version newer than any sent.
func (g *Gossip) LocalState(join bool) []byte {
	g.mu.Lock()
	g.version++
	v := g.version
	g.mu.Unlock()
	// A version from the clock survives a restart of this process.
	b, _ := json.Marshal(gossipState{Host: g.self, Version: uint64(time.Now().UnixNano()) + v, Members: g.names.Local()})
	return b
}

// MergeRemoteState takes a table from a push/pull exchange.
func (g *Gossip) MergeRemoteState(b []byte, join bool) { g.apply(b) }

// memberlist.EventDelegate

func (g *Gossip) NotifyJoin(n *memberlist.Node) {
	g.log.Info("overlay host joined", "host", n.Name)
}

// NotifyLeave forgets a host's names: it left, or stopped answering.
func (g *Gossip) NotifyLeave(n *memberlist.Node) {
	g.log.Info("overlay host left", "host", n.Name)
	g.mu.Lock()
	delete(g.seen, n.Name)
	g.mu.Unlock()
	g.names.SetRemote(n.Name, nil)
}

func (g *Gossip) NotifyUpdate(*memberlist.Node) {}

// slogWriter turns memberlist's log lines into debug records.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Debug("memberlist", "msg", string(bytes.TrimSpace(p)))
	return len(p), nil
}

var _ io.Writer = slogWriter{}
