// Package network is the one place where rootlessnet's data path is wired:
// the TAP link endpoint, the gVisor stack and the forwarder, like
// gvisor-tap-vsock's virtualnetwork.New.
package network

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/sniffer"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/rootlessnet/rootlessnet/forwarder"
	"github.com/rootlessnet/rootlessnet/stack"
	"github.com/rootlessnet/rootlessnet/stack/fastpath"
	"github.com/rootlessnet/rootlessnet/stack/link"
	"github.com/rootlessnet/rootlessnet/tap"
)

// Config describes one container's network.
type Config struct {
	// Tap is the TAP fd, non-blocking; the network owns it from New on.
	Tap *os.File
	// MoreQueues are the other queues' fds of a multi-queue TAP
	// (IFF_MULTI_QUEUE), as Tap: each is read by an event loop of its
	// own, which serves the fast path's flows the kernel puts on that
	// queue.
	MoreQueues []*os.File
	// AutoQueues keeps only the first queue attached while at most one
	// TCP flow is busy, and attaches more while several are (queues.go).
	AutoQueues bool
	MTU        int
	Addressing stack.Addressing
	// IPv6 is the container's IPv6 network, off unless Enabled.
	IPv6 stack.Addressing6
	// RouterAdverts announces the IPv6 prefix, route and DNS server so
	// that a container nobody configured autoconfigures (SLAAC).
	RouterAdverts       bool
	DisableHostLoopback bool
	DisableDNS          bool
	Nameservers         []netip.AddrPort
	// VnetHdr says the TAP was opened with IFF_VNET_HDR: offloads are
	// turned on and TCP moves as 64 KiB super-frames both ways.
	VnetHdr bool
	// Pcap, when set, receives every frame as pcap (LINKTYPE_RAW).
	Pcap io.Writer
	// TCPFastPath carries outbound TCP past the netstack
	// (stack/fastpath); off with Pcap, which must see every segment.
	TCPFastPath bool
	// BusyPoll is the fast path's longest busy-poll window
	// (stack/eventloop/busypoll.go); 0: none.
	BusyPoll time.Duration
	// Dialer makes the host-side connections.
	Dialer *net.Dialer
	// Names answers DNS queries for local names (a rootless network's
	// members) before the upstreams.
	Names forwarder.Names
	// Bridged: the TAP is a port of a bridge with several guests behind
	// it (a rootless network), not one container. What the data path
	// writes to "the guest" outside gVisor must then find each guest's
	// MAC: the link learns it by source address from the guests' frames
	// (link.GuestMACFor), and ICMP replies fall back to the stack's
	// neighbor table.
	Bridged bool
	Log     *slog.Logger
}

// Network is a running data path.
type Network struct {
	Stack *gstack.Stack
	Link  *link.Endpoint
	// Fast is the link's fast path: TCP flows, the UDP shortcut and
	// held SYNs.
	Fast      *fastpath.Path
	Forwarder *forwarder.Forwarder
	cfg       Config

	done      chan struct{}
	doneErr   error
	closeOnce sync.Once

	// solicited wakes the router advertiser; raStop ends it.
	solicited chan struct{}
	raStop    chan struct{}
	raDone    chan struct{}
	// trimStop ends the idle memory trimmer (memtrim.go).
	trimStop chan struct{}
	trimDone chan struct{}
	// queuesStop ends the queue governor (queues.go), if it runs.
	queuesStop chan struct{}
	queuesDone chan struct{}
}

// New starts the data path on cfg.Tap.
func New(cfg Config) (*Network, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	n := &Network{cfg: cfg, done: make(chan struct{})}
	var endOnce sync.Once
	onReadError := func(err error) {
		endOnce.Do(func() {
			n.doneErr = fmt.Errorf("reading the TAP: %w", err)
			close(n.done)
		})
	}
	var linkLocal6 netip.Addr // the stack's fe80:: address, with IPv6
	if cfg.IPv6.Enabled() {
		linkLocal6 = stack.LinkLocal(stack.GatewayMAC(cfg.Addressing))
	}
	owned := map[tcpip.Address]bool{
		tcpip.AddrFrom4(cfg.Addressing.Gateway.As4()): true,
		tcpip.AddrFrom4(cfg.Addressing.DNS.As4()):     true,
	}
	if cfg.IPv6.Enabled() {
		for _, a := range []netip.Addr{cfg.IPv6.Gateway, cfg.IPv6.DNS, linkLocal6} {
			owned[tcpip.AddrFrom16(a.As16())] = true
		}
	}
	owns := func(a tcpip.Address) bool { return owned[a] }
	taps := append([]*os.File{cfg.Tap}, cfg.MoreQueues...)
	closeTaps := func(files []*os.File) {
		for _, f := range files {
			f.Close()
		}
	}
	uso := false
	if cfg.VnetHdr {
		// Before link.New, which takes the fds over; on every queue
		// (the offloads are the device's, but each fd asks).
		for i, f := range taps {
			u, err := tap.SetOffload(f)
			if err != nil {
				closeTaps(taps)
				return nil, err
			}
			if i == 0 {
				uso = u
			}
		}
	}
	ep, err := link.New(cfg.Tap, uint32(cfg.MTU), stack.GatewayMAC(cfg.Addressing), onReadError, owns)
	if err != nil {
		closeTaps(taps)
		return nil, err
	}
	for i, f := range cfg.MoreQueues {
		if err := ep.AddQueue(f); err != nil {
			closeTaps(cfg.MoreQueues[i+1:])
			ep.Close()
			return nil, fmt.Errorf("TAP queue %d: %w", i+1, err)
		}
	}
	n.Link = ep
	autoQueues := cfg.AutoQueues && ep.Queues() > 1
	if autoQueues {
		// One queue until several flows are busy; for good without the
		// fast path, whose flows the governor follows. Before the
		// stack attaches the link, so the others are never read until
		// then.
		if err := ep.SetActiveQueues(1); err != nil {
			cfg.Log.Warn("detaching TAP queues failed: all stay attached", "err", err)
			autoQueues = false
		}
	}
	if cfg.IPv6.Enabled() && cfg.RouterAdverts {
		n.solicited = make(chan struct{}, 1)
		ep.OnRouterSolicit(func() {
			select {
			case n.solicited <- struct{}{}:
			default:
			}
		})
	}
	if cfg.Bridged {
		ep.EnableBridge()
	}
	if cfg.VnetHdr {
		ep.EnableVnetHdr()
		if uso {
			ep.EnableUSO()
		}
	}
	// Frames from the TAP meet the fast path first, then the stack.
	fast := fastpath.New(ep, ep.Loops()...)
	ep.SetInterceptor(fast)
	n.Fast = fast
	var nic gstack.LinkEndpoint = ep
	if cfg.Pcap != nil {
		sn, err := sniffer.NewWithWriter(ep, cfg.Pcap, uint32(cfg.MTU)+header.EthernetMinimumSize)
		if err != nil {
			ep.Close()
			return nil, fmt.Errorf("pcap: %w", err)
		}
		nic = sn
	}
	a := cfg.Addressing
	var shortcut forwarder.UDPShortcut
	if cfg.Pcap == nil {
		// The capture must see every datagram.
		shortcut = fast
	}
	guest := &guestWriter{link: ep, mac: stack.GatewayMAC(a), bridged: cfg.Bridged}
	n.Forwarder = forwarder.New(forwarder.Config{
		Policy: forwarder.Policy{
			Gateway:             a.Gateway,
			DNS:                 a.DNS,
			Gateway6:            cfg.IPv6.Gateway,
			DNS6:                cfg.IPv6.DNS,
			LinkLocal6:          linkLocal6,
			Network:             a.Network,
			DisableHostLoopback: cfg.DisableHostLoopback,
			DisableDNS:          cfg.DisableDNS,
		},
		Nameservers: cfg.Nameservers,
		Guest:       guest,
		Dialer:      cfg.Dialer,
		UDPShortcut: shortcut,
		Poller:      ep.Loop(),
		Names:       cfg.Names,
		Log:         cfg.Log,
	})
	if cfg.TCPFastPath && cfg.Pcap == nil {
		fast.EnableTCP(n.Forwarder)
		for _, l := range ep.Loops() {
			l.SetBusyPoll(cfg.BusyPoll)
		}
	}
	s, err := stack.New(stack.Config{
		Link:       nic,
		Addressing: a,
		IPv6:       cfg.IPv6,
		Handlers: stack.Handlers{
			TCP:   n.Forwarder.HandleTCP,
			UDP:   n.Forwarder.HandleUDP,
			ICMP4: n.Forwarder.HandleICMP4,
			ICMP6: n.Forwarder.HandleICMP6,
		},
	})
	if err != nil {
		ep.Close()
		n.Forwarder.Close()
		return nil, err
	}
	n.Stack = s
	guest.stack.Store(s)
	fast.SetSYNBusy(func(id gstack.TransportEndpointID, proto tcpip.NetworkProtocolNumber) bool {
		return s.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, stack.NICID) != nil
	})
	n.Forwarder.Attach(s)
	if n.solicited != nil {
		n.raStop, n.raDone = make(chan struct{}), make(chan struct{})
		go n.advertise()
	}
	n.trimStop, n.trimDone = make(chan struct{}), make(chan struct{})
	go trimIdle(n.trimStop, n.trimDone)
	if autoQueues && cfg.TCPFastPath && cfg.Pcap == nil {
		n.queuesStop, n.queuesDone = make(chan struct{}), make(chan struct{})
		go n.governQueues(n.queuesStop, n.queuesDone)
	}
	return n, nil
}

// raInterval re-announces the prefix well within its lifetimes.
const raInterval = 10 * time.Minute

// advertise sends router advertisements at start, on every solicitation
// and periodically, until Close.
func (n *Network) advertise() {
	defer close(n.raDone)
	ra := stack.RouterAdvert(stack.GatewayMAC(n.cfg.Addressing), n.cfg.IPv6.Network, uint32(n.cfg.MTU), n.dns6())
	tick := time.NewTicker(raInterval)
	defer tick.Stop()
	for {
		if err := n.Link.WriteFrame(ra); err != nil {
			n.cfg.Log.Debug("router advertisement", "err", err)
		}
		select {
		case <-n.raStop:
			return
		case <-n.solicited:
		case <-tick.C:
		}
	}
}

func (n *Network) dns6() netip.Addr {
	if n.cfg.DisableDNS {
		return netip.Addr{}
	}
	return n.cfg.IPv6.DNS
}

// Done is closed when the data path stopped on its own (the TAP went
// away); Err says why.
func (n *Network) Done() <-chan struct{} { return n.done }

// Err is the reason Done was closed.
func (n *Network) Err() error { return n.doneErr }

// Close stops the stack, every flow and the TAP.
func (n *Network) Close() {
	n.closeOnce.Do(func() {
		if n.raStop != nil {
			close(n.raStop)
			<-n.raDone
		}
		close(n.trimStop)
		<-n.trimDone
		if n.queuesStop != nil {
			close(n.queuesStop)
			<-n.queuesDone
		}
		n.Link.Close()
		// The fast path's flows after the loop has stopped.
		n.Fast.Close()
		// The read loop may still be in the stack with a frame read
		// before Close; Stack.Wait holds the stack's lock that it may
		// need, so wait for the loop first.
		n.Link.Wait()
		n.Forwarder.Close()
		n.Stack.Close()
		n.Stack.Wait()
	})
}

// guestWriter frames IP packets for the container.
type guestWriter struct {
	link *link.Endpoint
	mac  tcpip.LinkAddress
	// bridged: find the destination's MAC in stack's neighbor table
	// (stack is set before any packet flows).
	bridged bool
	stack   atomic.Pointer[gstack.Stack]
}

var errNoGuestMAC = errors.New("the container's MAC is not known yet")

func (g *guestWriter) WriteToGuest(ip []byte) error {
	if len(ip) == 0 {
		return errors.New("empty packet")
	}
	proto := header.IPv4ProtocolNumber
	if ip[0]>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	dst, ok := g.bridgeGuest(ip, proto)
	if !ok {
		dst, ok = g.link.GuestMAC()
	}
	if !ok {
		return errNoGuestMAC
	}
	frame := make([]byte, header.EthernetMinimumSize+len(ip))
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: g.mac, DstAddr: dst, Type: proto})
	copy(frame[header.EthernetMinimumSize:], ip)
	return g.link.WriteFrame(frame)
}

// bridgeGuest returns, on a bridge, the MAC of ip's destination: the one
// the link learned from the guest's frames, else the stack's neighbor
// table's, which holds every guest that asked for the gateway's (ARP,
// NDP).
func (g *guestWriter) bridgeGuest(ip []byte, proto tcpip.NetworkProtocolNumber) (tcpip.LinkAddress, bool) {
	if !g.bridged {
		return "", false
	}
	var dst tcpip.Address
	switch {
	case proto == header.IPv4ProtocolNumber && header.IPv4(ip).IsValid(len(ip)):
		dst = header.IPv4(ip).DestinationAddress()
	case proto == header.IPv6ProtocolNumber && header.IPv6(ip).IsValid(len(ip)):
		dst = header.IPv6(ip).DestinationAddress()
	default:
		return "", false
	}
	if a, ok := netip.AddrFromSlice(dst.AsSlice()); ok {
		if mac, ok := g.link.GuestMACFor(a); ok {
			return mac, true
		}
	}
	st := g.stack.Load()
	if st == nil {
		return "", false
	}
	entries, err := st.Neighbors(stack.NICID, proto)
	if err != nil {
		return "", false
	}
	for _, e := range entries {
		if e.Addr == dst && e.LinkAddr != "" {
			return e.LinkAddr, true
		}
	}
	return "", false
}
