package vxlan

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// Config is a tunnel's setup.
type Config struct {
	// Conn is the UDP socket datagrams are received on and sent from
	// (the host's ADDR:PORT); the tunnel owns it.
	Conn *net.UDPConn
	// Port is a bridge port (a TAP without virtio-net headers) whose
	// frames go to the peers; the tunnel owns it.
	Port *os.File
	VNI  uint32
	// Local is a MAC that stays on this host: the network's gateway,
	// which every host of the overlay has under the same address. Its
	// frames are not sent, and frames from a remote one are dropped.
	Local net.HardwareAddr
	// Ageing expires learnt MAC -> VTEP entries (DefaultAgeing if 0).
	Ageing time.Duration
	// MTU is the bridge port's: frames are at most MTU+14 bytes
	// (65520 if 0).
	MTU int
	Log *slog.Logger
}

// Stats counts what a tunnel carried and dropped.
type Stats struct {
	Sent, Received, Flooded uint64
	// Dropped datagrams: too short, without the I flag, of another VNI,
	// from a host that is not a peer, carrying a local MAC's frame.
	DropShort, DropFlags, DropVNI, DropStranger, DropLocal uint64
	// SendErrors: a peer that could not be sent to (unreachable, gone).
	SendErrors uint64
}

// Tunnel carries frames between a bridge port and the peers' VTEPs.
type Tunnel struct {
	cfg Config
	fdb *FDB
	log *slog.Logger

	mu    sync.RWMutex
	peers map[netip.AddrPort]struct{}

	sent, received, flooded                                atomic.Uint64
	dropShort, dropFlags, dropVNI, dropStranger, dropLocal atomic.Uint64
	sendErrors                                             atomic.Uint64

	wg   sync.WaitGroup
	once sync.Once
	done chan struct{}
}

// Start starts carrying frames, with the given peers.
func Start(cfg Config, peers []netip.AddrPort) *Tunnel {
	if cfg.Ageing == 0 {
		cfg.Ageing = DefaultAgeing
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MTU <= 0 {
		cfg.MTU = 65520
	}
	// Bursts of datagrams outrun one reader now and then: a larger
	// receive buffer (as far as net.core.rmem_max lets an unprivileged
	// process) drops fewer of them.
	cfg.Conn.SetReadBuffer(socketBuffer)
	cfg.Conn.SetWriteBuffer(socketBuffer)
	t := &Tunnel{cfg: cfg, fdb: NewFDB(cfg.Ageing), log: cfg.Log, peers: map[netip.AddrPort]struct{}{}, done: make(chan struct{})}
	for _, p := range peers {
		t.peers[canonical(p)] = struct{}{}
	}
	t.wg.Add(3)
	go t.fromPort()
	go t.fromPeers()
	go t.expire()
	return t
}

// canonical unmaps IPv4-mapped IPv6 addresses, as UDP sources arrive.
func canonical(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// AddPeer adds a VTEP; frames to unknown stations are flooded to it too.
func (t *Tunnel) AddPeer(p netip.AddrPort) {
	t.mu.Lock()
	t.peers[canonical(p)] = struct{}{}
	t.mu.Unlock()
}

// RemovePeer removes a VTEP and what was learnt behind it; false when it
// was not a peer.
func (t *Tunnel) RemovePeer(p netip.AddrPort) bool {
	p = canonical(p)
	t.mu.Lock()
	_, ok := t.peers[p]
	delete(t.peers, p)
	t.mu.Unlock()
	t.fdb.Forget(p)
	return ok
}

// Peers lists the VTEPs.
func (t *Tunnel) Peers() []netip.AddrPort {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]netip.AddrPort, 0, len(t.peers))
	for p := range t.peers {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Compare(out[j]) < 0 })
	return out
}

// Stats returns the counters.
func (t *Tunnel) Stats() Stats {
	return Stats{
		Sent: t.sent.Load(), Received: t.received.Load(), Flooded: t.flooded.Load(),
		DropShort: t.dropShort.Load(), DropFlags: t.dropFlags.Load(), DropVNI: t.dropVNI.Load(),
		DropStranger: t.dropStranger.Load(), DropLocal: t.dropLocal.Load(), SendErrors: t.sendErrors.Load(),
	}
}

// Close stops the tunnel and closes its socket and port.
func (t *Tunnel) Close() {
	t.once.Do(func() {
		close(t.done)
		t.cfg.Conn.Close()
		t.cfg.Port.Close()
	})
	t.wg.Wait()
}

// socketBuffer is the UDP socket's asked-for buffer size.
const socketBuffer = 4 << 20

// batch is how many datagrams one recvmmsg takes.
const batch = 32

// fromPort encapsulates the port's frames: to the VTEP a unicast
// destination was learnt behind, else to every peer.
func (t *Tunnel) fromPort() {
	defer t.wg.Done()
	buf := make([]byte, HeaderLen+t.cfg.MTU+14)
	Encode(buf, t.cfg.VNI)
	for {
		n, err := t.cfg.Port.Read(buf[HeaderLen:])
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				t.log.Error("vxlan: reading the bridge port", "err", err)
			}
			return
		}
		if n < 14 {
			continue
		}
		frame := buf[HeaderLen : HeaderLen+n]
		dst, src := net.HardwareAddr(frame[0:6]), net.HardwareAddr(frame[6:12])
		if sameMAC(src, t.cfg.Local) || sameMAC(dst, t.cfg.Local) {
			continue // the gateway is every host's own
		}
		msg := buf[:HeaderLen+n]
		if vtep, ok := t.fdb.Lookup(dst); ok {
			t.send(msg, vtep)
			continue
		}
		t.mu.RLock()
		peers := make([]netip.AddrPort, 0, len(t.peers))
		for p := range t.peers {
			peers = append(peers, p)
		}
		t.mu.RUnlock()
		if len(peers) > 0 && dst[0]&1 == 0 {
			t.flooded.Add(1)
		}
		for _, p := range peers {
			t.send(msg, p)
		}
	}
}

func (t *Tunnel) send(msg []byte, to netip.AddrPort) {
	if _, err := t.cfg.Conn.WriteToUDPAddrPort(msg, to); err != nil {
		t.sendErrors.Add(1)
		return
	}
	t.sent.Add(1)
}

// fromPeers decapsulates datagrams from the peers onto the port, learning
// where each source MAC lives. It reads them in batches (recvmmsg): one
// system call per datagram was where a loaded host's tunnel fell behind.
func (t *Tunnel) fromPeers() {
	defer t.wg.Done()
	pc := ipv4.NewPacketConn(t.cfg.Conn)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, HeaderLen+t.cfg.MTU+14)}
	}
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.log.Error("vxlan: reading the UDP socket", "err", err)
			}
			return
		}
		for i := range msgs[:n] {
			from, ok := msgs[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			if !t.receive(msgs[i].Buffers[0][:msgs[i].N], canonical(from.AddrPort())) {
				return
			}
		}
	}
}

// receive takes one datagram; false once the port is closed.
func (t *Tunnel) receive(b []byte, from netip.AddrPort) bool {
	vtep, ok := t.peerOf(from)
	if !ok {
		t.dropStranger.Add(1)
		return true
	}
	vni, frame, err := Decode(b)
	switch {
	case errors.Is(err, ErrShort):
		t.dropShort.Add(1)
		return true
	case err != nil:
		t.dropFlags.Add(1)
		return true
	case vni != t.cfg.VNI:
		t.dropVNI.Add(1)
		return true
	}
	src := net.HardwareAddr(frame[6:12])
	if sameMAC(src, t.cfg.Local) || sameMAC(frame[0:6], t.cfg.Local) {
		t.dropLocal.Add(1)
		return true
	}
	t.fdb.Learn(src, vtep)
	if _, err := t.cfg.Port.Write(frame); err != nil {
		// A full queue drops the frame, as a NIC's would; only a
		// closed port ends the tunnel.
		return !errors.Is(err, os.ErrClosed)
	}
	t.received.Add(1)
	return true
}

// peerOf returns the peer a datagram from addr came from: the kernel's
// vxlan sends from a source port of its choosing (a hash of the inner
// flow), so peers are matched by address, and answered on their port.
func (t *Tunnel) peerOf(from netip.AddrPort) (netip.AddrPort, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if _, ok := t.peers[from]; ok {
		return from, true
	}
	for p := range t.peers {
		if p.Addr() == from.Addr() {
			return p, true
		}
	}
	return netip.AddrPort{}, false
}

// expire drops stale FDB entries now and then.
func (t *Tunnel) expire() {
	defer t.wg.Done()
	tick := time.NewTicker(t.cfg.Ageing / 4)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-tick.C:
			t.fdb.Expire()
		}
	}
}

func sameMAC(a, b net.HardwareAddr) bool {
	return len(b) == 6 && len(a) >= 6 && a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}
