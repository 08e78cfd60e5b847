// Package forwarder carries the container's flows to host sockets: TCP and
// UDP through the NAT, DNS to the host's resolvers, ICMP echo through
// unprivileged ping sockets, and the host-loopback policy.
package forwarder

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"github.com/rootlessnet/rootlessnet/stack/fastpath"
)

// GuestWriter sends a whole IP packet to the container, bypassing the
// stack: echo replies and ICMP errors made from host sockets' answers.
type GuestWriter interface {
	WriteToGuest(ipPacket []byte) error
}

// UDPShortcut carries a UDP flow's datagrams past the netstack once the
// flow is set up: from the container to a sink (AddUDPFlow), and to the
// container (WriteUDP, false when the stack must send it); and the
// datagrams to an address of the gateway's own to a service
// (AddUDPService: the DNS address); see fastpath.Path.
type UDPShortcut interface {
	AddUDPFlow(src, dst netip.AddrPort, sink UDPSink) (remove func())
	AddUDPService(dst netip.AddrPort, svc UDPService) (remove func())
	WriteUDP(src, dst netip.AddrPort, payload []byte) bool
	// WriteUDPBatch sends a run of datagrams of seg bytes each (the
	// last may be shorter) as one where the TAP takes it.
	WriteUDPBatch(src, dst netip.AddrPort, run []byte, seg int) bool
	// WatchHost calls onReadable on the read loop while conn has
	// something queued, until stop, which comes before conn's close.
	WatchHost(conn syscall.Conn, onReadable func()) (stop func(), err error)
}

// UDPSink is fastpath.UDPSink: it takes a flow's datagrams (Datagram)
// and sends what it holds at the end of a burst (Flush).
type UDPSink = interface {
	Datagram(payload [][]byte, seg int)
	Flush()
}

// UDPService is fastpath.UDPService: it takes a datagram to the
// service's address from src, on the link's read loop (it must not
// block), its payload in pieces valid only during the call.
type UDPService = fastpath.UDPService

// Poller is the link's event loop (eventloop.Loop), where the UDP
// shortcut's datagrams arrive: the DNS service serves its sockets to the
// upstreams there too.
type Poller interface {
	// Add registers fd; h.OnPoll runs on the loop.
	Add(fd int, events uint32, h eventloop.Handler) error
	// Forget unregisters fd, which its close then takes out of the
	// epoll.
	Forget(fd int)
}

// Config is what the forwarder needs.
type Config struct {
	Policy Policy
	// Nameservers are the DNS upstreams, in order.
	Nameservers []netip.AddrPort
	// Guest writes ICMP packets to the container; nil disables ICMP
	// echo forwarding and UDP port-unreachable reports.
	Guest GuestWriter
	// Dialer makes host-side connections (outbound address binding).
	Dialer *net.Dialer
	// UDPIdleTimeout ends UDP flows that carried nothing for that long.
	UDPIdleTimeout time.Duration
	// DNSIdleTimeout ends UDP flows to the DNS address that carried no
	// query for that long (default dnsUDPFlowIdle).
	DNSIdleTimeout time.Duration
	// Names, when set, answers the queries for names the network knows
	// itself (a rootless network's members) before any upstream is
	// asked.
	Names Names
	// UDPShortcut, when set, carries a UDP flow's datagrams both ways
	// once its host socket is connected; with Poller, it takes the UDP
	// queries to the DNS address past the netstack too (dnsudp.go).
	UDPShortcut UDPShortcut
	Poller      Poller
	Log         *slog.Logger
}

// Forwarder owns every flow it started: Close ends them all and waits.
type Forwarder struct {
	cfg Config
	// tcpDialer is cfg.Dialer connecting within its Control hook
	// (dial.go).
	tcpDialer *net.Dialer
	log       *slog.Logger
	st        *stack.Stack

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// wgMu orders wg.Add against Close's Wait: a flow the stack starts
	// while Close runs either counts before Wait or is refused.
	wgMu    sync.Mutex
	closing bool

	lim limits // flow cap and fd exhaustion (limits.go)

	pingWarnOnce sync.Once
	pingSlots    chan struct{}
	dnsSlots     chan struct{}
	// dns answers the UDP queries to the DNS address past the stack
	// (dnsudp.go); nil without a UDP shortcut.
	dns *dnsMux
}

// New makes a forwarder; Attach gives it the stack once that exists.
func New(cfg Config) *Forwarder {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = 90 * time.Second
	}
	if cfg.DNSIdleTimeout <= 0 {
		cfg.DNSIdleTimeout = dnsUDPFlowIdle
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{
		cfg:       cfg,
		tcpDialer: connectAtOnce(cfg.Dialer),
		log:       cfg.Log,
		ctx:       ctx,
		cancel:    cancel,
		pingSlots: make(chan struct{}, 128),
		dnsSlots:  make(chan struct{}, 256),
	}
	f.dns = newDNSMux(f)
	return f
}

// Attach tells the forwarder which stack its requests come from.
func (f *Forwarder) Attach(s *stack.Stack) { f.st = s }

// Close ends every flow and waits for their goroutines.
func (f *Forwarder) Close() {
	if f.dns != nil {
		f.dns.close()
	}
	f.wgMu.Lock()
	f.closing = true
	f.wgMu.Unlock()
	f.cancel()
	f.wg.Wait()
}

// addFlow counts a goroutine of a flow in wg, unless the forwarder is
// closing.
func (f *Forwarder) addFlow() bool {
	f.wgMu.Lock()
	defer f.wgMu.Unlock()
	if f.closing {
		return false
	}
	f.wg.Add(1)
	return true
}

// goFlow runs fn in a goroutine the forwarder owns; false when closing.
func (f *Forwarder) goFlow(fn func()) bool {
	if !f.addFlow() {
		return false
	}
	go func() {
		defer f.wg.Done()
		fn()
	}()
	return true
}

func addrPortOf(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}
