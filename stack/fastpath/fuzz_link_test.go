package fastpath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/rootlessnet/rootlessnet/stack"
	"github.com/rootlessnet/rootlessnet/stack/link"
)

// The frame fuzzer's container: 10.0.2.100 behind the default addressing.
var (
	fzAddressing = stack.Addressing{
		Network: netip.MustParsePrefix("10.0.2.0/24"),
		Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS:     netip.MustParseAddr("10.0.2.3"),
		Guest:   netip.MustParseAddr("10.0.2.100"),
	}
	fzGatewayMAC = []byte(stack.GatewayMAC(fzAddressing))
	fzGuestMAC   = []byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x64}
	fzBroadcast  = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	fzGuest4     = []byte{10, 0, 2, 100}
	fzGateway4   = []byte{10, 0, 2, 2}
	fzDNS4       = []byte{10, 0, 2, 3}
	fzWorld4     = []byte{198, 51, 100, 1}
	fzGuest6     = netip.MustParseAddr("fe80::64").AsSlice()
	fzWorld6     = netip.MustParseAddr("2001:db8::1").AsSlice()
)

// fzAliveTimeout bounds the wait for the ARP reply that proves the
// dispatcher still runs after an input.
const fzAliveTimeout = 10 * time.Second

// frameHarness is the fast path on a real link endpoint, under a real
// gVisor stack, whose "TAP" is one end of a SOCK_SEQPACKET socketpair:
// one frame per read and write, as a TAP has. The test plays the
// container on the other end. It is wired as network.New wires the three.
type frameHarness struct {
	s    *gstack.Stack
	link *link.Endpoint
	fast *Path
	peer *os.File
	// peers are the container's ends of the link's queues: peer first.
	peers []*os.File
	// tcpOut and udpOut count the TCP and UDP frames to the container
	// that came out of each queue.
	tcpOut, udpOut []atomic.Uint64

	// arpReplies carries the target MAC of every ARP reply from the
	// gateway address.
	arpReplies chan [6]byte
	// udpFrames carries a copy of every UDP frame to the container.
	udpFrames chan []byte
	// tcpFrames, with frameHarnessOptions.tcpFrames, carries a copy of
	// every TCP frame to the container; tcpDropped counts those it had
	// no room for.
	tcpFrames  chan []byte
	tcpDropped atomic.Uint64
	readers    sync.WaitGroup
	readErr    atomic.Pointer[error] // the link's read loop ended
	seq        atomic.Uint32

	// abandoned: close returns at once, leaving the goroutines behind.
	abandoned atomic.Bool
	// closeStage is the step close is at, for a close that hangs.
	closeStage atomic.Value

	mu        sync.Mutex
	closing   bool
	flows     sync.WaitGroup // handler goroutines
	closeOnce sync.Once
}

// track registers a handler goroutine; false once the harness closes.
func (h *frameHarness) track() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.flows.Add(1)
	return true
}

// frameHarnessOptions adapt the harness to a test; the zero value is
// newFrameHarness.
type frameHarnessOptions struct {
	// tcpFast turns the link's TCP fast path on with this policy.
	tcpFast TCPPolicy
	// tcpFrames passes TCP frames to the container on h.tcpFrames.
	tcpFrames bool
	// queues, above 1, gives the link that many queues (as a
	// multi-queue TAP's), each a socketpair of its own: h.peers.
	queues int
}

func newFrameHarness(tb testing.TB) *frameHarness {
	tb.Helper()
	return newFrameHarnessWith(tb, frameHarnessOptions{})
}

func newFrameHarnessWith(tb testing.TB, o frameHarnessOptions) *frameHarness {
	tb.Helper()
	queues := max(o.queues, 1)
	var ends []*os.File // the link's ends
	h := &frameHarness{
		arpReplies: make(chan [6]byte, 256),
		udpFrames:  make(chan []byte, 64),
		tcpOut:     make([]atomic.Uint64, queues),
		udpOut:     make([]atomic.Uint64, queues),
	}
	for range queues {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			tb.Fatalf("socketpair: %v", err)
		}
		for _, fd := range fds {
			// Room for many frames queued either way; best effort.
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		}
		ends = append(ends, os.NewFile(uintptr(fds[0]), "tap-end"))
		h.peers = append(h.peers, os.NewFile(uintptr(fds[1]), "container-end"))
	}
	h.peer = h.peers[0]
	closePeers := func() {
		for _, p := range h.peers {
			p.Close()
		}
	}
	gw, dns := tcpip.AddrFrom4(fzAddressing.Gateway.As4()), tcpip.AddrFrom4(fzAddressing.DNS.As4())
	owns := func(a tcpip.Address) bool { return a == gw || a == dns }
	onReadError := func(err error) { h.readErr.Store(&err) }
	ep, err := link.New(ends[0], 65520, stack.GatewayMAC(fzAddressing), onReadError, owns)
	if err != nil {
		for _, e := range ends {
			e.Close()
		}
		closePeers()
		tb.Fatalf("link.New: %v", err)
	}
	for i, end := range ends[1:] {
		if err := ep.AddQueue(end); err != nil {
			for _, e := range ends[i+2:] {
				e.Close()
			}
			ep.Close()
			closePeers()
			tb.Fatalf("AddQueue: %v", err)
		}
	}
	h.link = ep
	h.fast = New(ep, ep.Loops()...)
	ep.SetInterceptor(h.fast)
	if o.tcpFast != nil {
		h.fast.EnableTCP(o.tcpFast) // before the NIC starts the read loop
	}
	if o.tcpFrames {
		h.tcpFrames = make(chan []byte, 8192)
	}
	s, err := stack.New(stack.Config{
		Link:       ep,
		Addressing: fzAddressing,
		Handlers:   stack.Handlers{TCP: h.handleTCP, UDP: h.handleUDP, ICMP4: h.handleICMP4},
	})
	if err != nil {
		ep.Close()
		closePeers()
		tb.Fatalf("stack.New: %v", err)
	}
	h.s = s
	for q := range h.peers {
		h.readers.Add(1)
		go h.readFrames(q)
	}
	tb.Cleanup(h.close)
	return h
}

// abandon makes close return at once: a test that found the link
// deadlocked reports it rather than hang on it.
func (h *frameHarness) abandon() { h.abandoned.Store(true) }

func (h *frameHarness) close() {
	if h.abandoned.Load() {
		return
	}
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closing = true
		h.mu.Unlock()
		// As network.Close: the TAP first, which ends the read loop,
		// and its end before Stack.Wait, which holds a lock the loop
		// may still need.
		stage := func(s string) { h.closeStage.Store(s) }
		stage("link.Close")
		h.link.Close()
		stage("fast.Close")
		h.fast.Close()
		stage("link.Wait")
		h.link.Wait()
		stage("stack.Close")
		h.s.Close()
		stage("stack.Wait")
		h.s.Wait()
		stage("peers.Close")
		for _, p := range h.peers {
			p.Close()
		}
		stage("the test's readers")
		h.readers.Wait()
		stage("handlers")
		h.flows.Wait()
		stage("done")
	})
}

// handleTCP behaves like the forwarder without dialing: odd destination
// ports are refused (RST), even ones accepted and echoed for a moment.
func (h *frameHarness) handleTCP(r *tcp.ForwarderRequest) {
	if r.ID().LocalPort%2 == 1 || !h.track() {
		r.Complete(true)
		return
	}
	defer h.flows.Done()
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		r.Complete(true)
		return
	}
	r.Complete(false)
	c := gonet.NewTCPConn(&wq, ep)
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

// handleUDP: odd ports unreachable (ICMP), even ones echo one datagram.
func (h *frameHarness) handleUDP(r *udp.ForwarderRequest) bool {
	if r.ID().LocalPort%2 == 1 {
		return false
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		return true
	}
	c := gonet.NewUDPConn(&wq, ep)
	if !h.track() {
		c.Close()
		return true
	}
	go func() {
		defer h.flows.Done()
		defer c.Close()
		c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 2048)
		if n, from, err := c.ReadFrom(buf); err == nil {
			c.WriteTo(buf[:n], from)
		}
	}()
	return true
}

// handleICMP4 lets the stack answer echo requests itself.
func (h *frameHarness) handleICMP4(gstack.TransportEndpointID, *gstack.PacketBuffer) bool {
	return false
}

// readFrames drains what the stack sends the container on queue q,
// reports ARP replies for the gateway and passes UDP frames on.
func (h *frameHarness) readFrames(q int) {
	defer h.readers.Done()
	buf := make([]byte, link.MaxFrame+1)
	for {
		n, err := h.peers[q].Read(buf)
		if err != nil {
			return
		}
		f := buf[:n]
		if isUDPFrame(f) {
			h.udpOut[q].Add(1)
			select {
			case h.udpFrames <- append([]byte(nil), f...):
			default: // nobody waits for that many; drop
			}
			continue
		}
		if isTCPFrame(f) {
			h.tcpOut[q].Add(1)
		}
		if h.tcpFrames != nil && isTCPFrame(f) {
			select {
			case h.tcpFrames <- append([]byte(nil), f...):
			default:
				h.tcpDropped.Add(1)
			}
			continue
		}
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0806 {
			continue
		}
		arp := f[14:]
		if binary.BigEndian.Uint16(arp[6:]) != 2 || string(arp[14:18]) != string(fzGateway4) {
			continue
		}
		var tha [6]byte
		copy(tha[:], arp[18:24])
		select {
		case h.arpReplies <- tha:
		default: // nobody waits for that many; drop
		}
	}
}

// isUDPFrame spots an Ethernet frame carrying IPv4 or IPv6 UDP.
func isUDPFrame(f []byte) bool {
	if len(f) < 14 {
		return false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		return len(f) >= 14+20+8 && f[14+9] == 17
	case 0x86dd:
		return len(f) >= 14+40+8 && f[14+6] == 17
	}
	return false
}

// isTCPFrame spots an Ethernet frame carrying IPv4 or IPv6 TCP.
func isTCPFrame(f []byte) bool {
	if len(f) < 14 {
		return false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		return len(f) >= 14+20+20 && f[14+9] == 6
	case 0x86dd:
		return len(f) >= 14+40+20 && f[14+6] == 6
	}
	return false
}

// send writes one frame as the container, on the first queue.
func (h *frameHarness) send(tb testing.TB, frame []byte) {
	tb.Helper()
	h.sendOn(tb, 0, frame)
}

// sendOn writes one frame as the container on queue q.
func (h *frameHarness) sendOn(tb testing.TB, q int, frame []byte) {
	tb.Helper()
	h.peers[q].SetWriteDeadline(time.Now().Add(fzAliveTimeout))
	if _, err := h.peers[q].Write(frame); err != nil {
		tb.Fatalf("writing a %d-byte frame to the stack: %v (the read loop is stalled or gone)", len(frame), err)
	}
}

// checkAlive asks for the gateway's MAC from a MAC never used before and
// waits for the answer: the dispatcher still reads, the stack still
// answers.
func (h *frameHarness) checkAlive(tb testing.TB) {
	tb.Helper()
	if p := h.readErr.Load(); p != nil {
		tb.Fatalf("the TAP read loop ended: %v", *p)
	}
	n := h.seq.Add(1)
	mac := [6]byte{0x02, 0xfa, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	h.send(tb, arpFrame(fzBroadcast, mac[:], 1, mac[:], fzGuest4, make([]byte, 6), fzGateway4))
	deadline := time.NewTimer(fzAliveTimeout)
	defer deadline.Stop()
	for {
		select {
		case got := <-h.arpReplies:
			if got == mac {
				return
			}
		case <-deadline.C:
			tb.Fatalf("no ARP reply for the gateway within %v: the stack stalled (link stats rx=%d dropped=%d tx=%d txerr=%d)",
				fzAliveTimeout, h.link.Stats().RxFrames.Load(), h.link.Stats().RxDropped.Load(), h.link.Stats().TxFrames.Load(), h.link.Stats().TxErrors.Load())
		}
	}
}

// Frame builders for the seed corpus.

func fzChecksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func ethFrame(dst, src []byte, etherType uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], etherType)
	return append(f, payload...)
}

func arpFrame(dst, src []byte, op uint16, sha, spa, tha, tpa []byte) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:], sha)
	copy(a[14:], spa)
	copy(a[18:], tha)
	copy(a[24:], tpa)
	return ethFrame(dst, src, 0x0806, a)
}

// ipv4Packet builds an IPv4 header (with options) and payload; the
// transport checksum at csumOff in payload (if >= 0) is filled in.
func ipv4Packet(src, dst []byte, proto uint8, options, payload []byte, csumOff int) []byte {
	hl := 20 + len(options)
	p := make([]byte, hl+len(payload))
	p[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	p[8] = 64
	p[9] = proto
	copy(p[12:], src)
	copy(p[16:], dst)
	copy(p[20:], options)
	binary.BigEndian.PutUint16(p[10:], fzChecksum(p[:hl], 0))
	copy(p[hl:], payload)
	if csumOff >= 0 {
		l4 := p[hl:]
		var pseudo uint32
		for i := 0; i < 4; i += 2 {
			pseudo += uint32(binary.BigEndian.Uint16(src[i:])) + uint32(binary.BigEndian.Uint16(dst[i:]))
		}
		pseudo += uint32(proto) + uint32(len(l4))
		binary.BigEndian.PutUint16(l4[csumOff:], fzChecksum(l4, pseudo))
	}
	return p
}

func ipv6Packet(src, dst []byte, next uint8, hopLimit uint8, payload []byte, csumOff int) []byte {
	p := make([]byte, 40+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(payload)))
	p[6] = next
	p[7] = hopLimit
	copy(p[8:], src)
	copy(p[24:], dst)
	copy(p[40:], payload)
	if csumOff >= 0 {
		l4 := p[40:]
		var pseudo uint32
		for i := 0; i < 16; i += 2 {
			pseudo += uint32(binary.BigEndian.Uint16(src[i:])) + uint32(binary.BigEndian.Uint16(dst[i:]))
		}
		pseudo += uint32(len(l4)) + uint32(next)
		binary.BigEndian.PutUint16(l4[csumOff:], fzChecksum(l4, pseudo))
	}
	return p
}

func tcpSegment(sport, dport uint16, seq, ack uint32, flags uint8, options, data []byte) []byte {
	hl := 20 + len(options)
	s := make([]byte, hl+len(data))
	binary.BigEndian.PutUint16(s[0:], sport)
	binary.BigEndian.PutUint16(s[2:], dport)
	binary.BigEndian.PutUint32(s[4:], seq)
	binary.BigEndian.PutUint32(s[8:], ack)
	s[12] = byte(hl/4) << 4
	s[13] = flags
	binary.BigEndian.PutUint16(s[14:], 65535)
	copy(s[20:], options)
	copy(s[hl:], data)
	return s
}

func udpDatagram(sport, dport uint16, data []byte) []byte {
	d := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(d[0:], sport)
	binary.BigEndian.PutUint16(d[2:], dport)
	binary.BigEndian.PutUint16(d[4:], uint16(len(d)))
	copy(d[8:], data)
	return d
}

func icmpMessage(typ, code uint8, body []byte) []byte {
	m := make([]byte, 4+len(body))
	m[0], m[1] = typ, code
	copy(m[4:], body)
	return m
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
)

func toGateway4(p []byte) []byte { return ethFrame(fzGatewayMAC, fzGuestMAC, 0x0800, p) }
func toGateway6(p []byte) []byte { return ethFrame(fzGatewayMAC, fzGuestMAC, 0x86dd, p) }

// fuzzFrameSeeds are valid frames of every kind the container sends, and
// the classic malformed ones.
func fuzzFrameSeeds() [][]byte {
	synOpts := []byte{2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}
	v4 := func(dst []byte, proto uint8, l4 []byte, csumOff int) []byte {
		return toGateway4(ipv4Packet(fzGuest4, dst, proto, nil, l4, csumOff))
	}
	dnsQuery := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1}
	echo := icmpMessage(8, 0, []byte{0, 1, 0, 1, 'p', 'i', 'n', 'g'})
	binary.BigEndian.PutUint16(echo[2:], fzChecksum(echo, 0))

	// Neighbour solicitation for fe80::2 from fe80::64, with a source
	// link-layer address option.
	ns := make([]byte, 4+4+16+8)
	ns[0] = 135
	copy(ns[8:], netip.MustParseAddr("fe80::2").AsSlice())
	ns[24], ns[25] = 1, 1
	copy(ns[26:], fzGuestMAC)
	solicitedNode := netip.MustParseAddr("ff02::1:ff00:2").AsSlice()
	nsFrame := ethFrame([]byte{0x33, 0x33, 0xff, 0, 0, 2}, fzGuestMAC, 0x86dd, ipv6Packet(fzGuest6, solicitedNode, 58, 255, ns, 2))
	// DAD probe: unspecified source, no option.
	dad := make([]byte, 24)
	dad[0] = 135
	copy(dad[8:], fzGuest6)
	dadFrame := ethFrame([]byte{0x33, 0x33, 0xff, 0, 0, 0x64}, fzGuestMAC, 0x86dd, ipv6Packet(make([]byte, 16), netip.MustParseAddr("ff02::1:ff00:64").AsSlice(), 58, 255, dad, 2))
	rs := icmpMessage(133, 0, make([]byte, 4))
	rsFrame := ethFrame([]byte{0x33, 0x33, 0, 0, 0, 2}, fzGuestMAC, 0x86dd, ipv6Packet(fzGuest6, netip.MustParseAddr("ff02::2").AsSlice(), 58, 255, rs, 2))
	echo6 := icmpMessage(128, 0, []byte{0, 1, 0, 1, 'p', 'i', 'n', 'g'})
	// Hop-by-hop header (router alert) then a fragment header then UDP.
	hbh := []byte{44, 0, 5, 2, 0, 0, 1, 0}
	frag := []byte{17, 0, 0, 1, 0, 0, 0, 42}
	ext := append(append(hbh, frag...), udpDatagram(40000, 7, []byte("frag"))...)

	tcpSyn := v4(fzWorld4, 6, tcpSegment(40000, 80, 1000, 0, tcpSYN, synOpts, nil), 16)
	seeds := [][]byte{
		// ARP
		arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4),
		arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzDNS4),
		arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, make([]byte, 4), make([]byte, 6), fzGuest4), // DAD probe
		arpFrame(fzGatewayMAC, fzGuestMAC, 2, fzGuestMAC, fzGuest4, fzGatewayMAC, fzGateway4),
		arpFrame(fzBroadcast, fzGuestMAC, 2, fzGuestMAC, fzGuest4, fzBroadcast, fzGuest4), // gratuitous
		arpFrame(fzBroadcast, fzGuestMAC, 1, fzBroadcast, fzGuest4, make([]byte, 6), fzWorld4),
		arpFrame(fzBroadcast, fzGuestMAC, 7, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4),
		func() []byte { // hardware length 16
			f := arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4)
			f[18] = 16
			return f
		}(),
		arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4)[:30],

		// IPv4 TCP
		tcpSyn,
		v4(fzWorld4, 6, tcpSegment(40001, 81, 1000, 0, tcpSYN, nil, nil), 16),
		v4(fzGateway4, 6, tcpSegment(40002, 22, 1000, 0, tcpSYN, synOpts, nil), 16),
		v4(fzDNS4, 6, tcpSegment(40003, 53, 1000, 0, tcpSYN, nil, nil), 16),
		v4(fzWorld4, 6, tcpSegment(40000, 80, 1001, 1, tcpACK|tcpPSH, nil, []byte("hello")), 16),
		v4(fzWorld4, 6, tcpSegment(40000, 80, 1001, 1, tcpRST, nil, nil), 16),
		v4(fzWorld4, 6, tcpSegment(40000, 80, 1001, 1, tcpFIN|tcpACK, nil, nil), 16),
		v4(fzWorld4, 6, tcpSegment(40004, 80, 1000, 0, tcpSYN|tcpFIN|tcpRST|tcpPSH|tcpACK|tcpURG, nil, []byte("x")), 16),
		v4(fzWorld4, 6, tcpSegment(40005, 80, 1000, 0, tcpSYN, []byte{2, 0, 3, 1, 8, 255, 0}, nil)[:20+6], 16), // bad options
		v4(fzWorld4, 6, func() []byte { // data offset beyond the segment
			s := tcpSegment(40006, 80, 1000, 0, tcpSYN, nil, nil)
			s[12] = 0xf0
			return s
		}(), 16),
		v4(fzWorld4, 6, tcpSegment(40007, 80, 1000, 0, tcpSYN, nil, nil)[:12], -1),

		// IPv4 UDP
		v4(fzWorld4, 17, udpDatagram(50000, 7000, []byte("datagram")), 6),
		v4(fzWorld4, 17, udpDatagram(50001, 9, []byte("datagram")), 6),
		v4(fzDNS4, 17, udpDatagram(50002, 53, dnsQuery), 6),
		v4(fzGateway4, 17, udpDatagram(50003, 8000, nil), 6),
		v4(fzWorld4, 17, func() []byte { // UDP length larger than the packet
			d := udpDatagram(50004, 7000, []byte("short"))
			binary.BigEndian.PutUint16(d[4:], 4000)
			return d
		}(), -1),
		v4(fzWorld4, 17, func() []byte { // UDP length below the header
			d := udpDatagram(50005, 7000, []byte("short"))
			binary.BigEndian.PutUint16(d[4:], 3)
			return d
		}(), -1),
		ethFrame(fzBroadcast, fzGuestMAC, 0x0800, ipv4Packet([]byte{0, 0, 0, 0}, []byte{255, 255, 255, 255}, 17, nil, udpDatagram(68, 67, make([]byte, 240)), 6)), // DHCP discover

		// IPv4 ICMP
		v4(fzGateway4, 1, echo, -1),
		v4(fzWorld4, 1, echo, -1),
		v4(fzWorld4, 1, icmpMessage(3, 3, make([]byte, 28)), -1), // an error quoting nothing useful
		v4(fzWorld4, 1, icmpMessage(8, 0, nil)[:2], -1),

		// IPv4 odd headers
		toGateway4(ipv4Packet(fzGuest4, fzWorld4, 6, []byte{7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0}, tcpSegment(40008, 80, 1, 0, tcpSYN, nil, nil), -1)), // record route
		func() []byte { // first fragment
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(50006, 7000, make([]byte, 64)), 6)
			p[6] = 0x20
			return toGateway4(p)
		}(),
		func() []byte { // a last fragment at a large offset
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, make([]byte, 64), -1)
			binary.BigEndian.PutUint16(p[6:], 0x1ff0)
			return toGateway4(p)
		}(),
		func() []byte { // total length beyond the frame
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(50007, 7000, nil), 6)
			binary.BigEndian.PutUint16(p[2:], 60000)
			return toGateway4(p)
		}(),
		func() []byte { // total length below the header
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(50008, 7000, nil), 6)
			binary.BigEndian.PutUint16(p[2:], 10)
			return toGateway4(p)
		}(),
		func() []byte { // IHL 15 on a 28-byte packet
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(50009, 7000, nil), 6)
			p[0] = 0x4f
			return toGateway4(p)
		}(),
		func() []byte { // IHL 2
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(50010, 7000, nil), 6)
			p[0] = 0x42
			return toGateway4(p)
		}(),
		func() []byte { // version 6 in an IPv4 frame
			p := ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(50011, 7000, nil), 6)
			p[0] = 0x65
			return toGateway4(p)
		}(),
		v4(fzWorld4, 47, []byte{0, 0, 8, 0}, -1),                                                         // GRE
		v4([]byte{224, 0, 0, 22}, 2, []byte{0x22, 0, 0, 0, 0, 0, 0, 0}, -1),                              // IGMP
		toGateway4(ipv4Packet(fzGuest4, fzGuest4, 6, nil, tcpSegment(1, 2, 0, 0, tcpSYN, nil, nil), 16)), // to itself
		toGateway4(ipv4Packet([]byte{127, 0, 0, 1}, fzWorld4, 17, nil, udpDatagram(1, 7000, nil), 6)),    // martian source

		// IPv6
		nsFrame, dadFrame, rsFrame,
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 58, 64, echo6, 2)),
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 6, 64, tcpSegment(40009, 80, 1000, 0, tcpSYN, synOpts, nil), 16)),
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 17, 64, udpDatagram(50012, 7000, []byte("v6")), 6)),
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 0, 64, ext, -1)),
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 44, 64, append([]byte{17, 0, 0, 1, 0, 0, 0, 43}, udpDatagram(50013, 7000, []byte("f"))...), -1)),
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 59, 64, nil, -1)), // no next header
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 58, 64, icmpMessage(1, 4, make([]byte, 48)), 2)),
		func() []byte { // payload length beyond the frame
			p := ipv6Packet(fzGuest6, fzWorld6, 17, 64, udpDatagram(50014, 7000, nil), -1)
			binary.BigEndian.PutUint16(p[4:], 65535)
			return toGateway6(p)
		}(),
		toGateway6(ipv6Packet(fzGuest6, fzWorld6, 17, 64, nil, -1)[:30]),

		// Ethernet oddities
		nil,
		make([]byte, 13),
		ethFrame(fzGatewayMAC, fzGuestMAC, 0x0800, nil),
		ethFrame(fzGatewayMAC, fzGuestMAC, 0x8100, append([]byte{0, 5, 8, 0}, ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(1, 7000, nil), 6)...)), // VLAN
		ethFrame(fzGatewayMAC, fzGuestMAC, 0x88cc, make([]byte, 40)),                                                                                     // LLDP
		ethFrame(fzGatewayMAC, fzGuestMAC, 0x0000, make([]byte, 40)),                                                                                     // 802.3 length
		ethFrame([]byte{0x02, 1, 2, 3, 4, 5}, fzGuestMAC, 0x0800, ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(1, 7000, nil), 6)),                 // another MAC
		ethFrame([]byte{0x01, 0, 0x5e, 0, 0, 1}, fzGuestMAC, 0x0800, ipv4Packet(fzGuest4, []byte{224, 0, 0, 1}, 17, nil, udpDatagram(1, 7000, nil), 6)),  // multicast
		ethFrame(fzGatewayMAC, fzBroadcast, 0x0800, ipv4Packet(fzGuest4, fzWorld4, 17, nil, udpDatagram(1, 7000, nil), 6)),                               // broadcast source
		append(tcpSyn, make([]byte, 1000)...), // trailing bytes
	}
	return seeds
}

// FuzzFrames sends arbitrary frames into a real stack through the TAP
// link endpoint, one per input, with handlers that behave like the
// forwarder without dialing. After each input an ARP request for the
// gateway must still be answered within fzAliveTimeout: no panic, no
// stalled or dead read loop.
//
// fixHeader rewrites the Ethernet addresses to the container's and the
// gateway's, so that mutations spend their time past the MAC filter.
func FuzzFrames(f *testing.F) {
	for _, s := range fuzzFrameSeeds() {
		f.Add(s, false)
		if len(s) >= 14 {
			f.Add(s, true)
		}
	}
	// One stack per fuzzing process: state left by earlier inputs (half
	// open connections, neighbour entries, fragments) is part of what a
	// long-running stack meets.
	h := newFrameHarness(f)
	h.checkAlive(f)

	f.Fuzz(func(t *testing.T, frame []byte, fixHeader bool) {
		if len(frame) > link.MaxFrame {
			frame = frame[:link.MaxFrame] // a TAP never delivers more
		}
		frame = append([]byte(nil), frame...)
		if fixHeader && len(frame) >= 14 {
			copy(frame, fzGatewayMAC)
			copy(frame[6:], fzGuestMAC)
		}
		// A TAP never delivers an empty frame. Over a seqpacket socket an
		// empty one reads as EOF and would end the read loop: not a case
		// the product meets.
		if len(frame) > 0 {
			h.send(t, frame)
		}
		h.checkAlive(t)
	})
}

// TestFrameHarnessStopsCleanly: the harness itself (stack, read loop,
// handler goroutines) ends when closed, even with flows in progress.
func TestFrameHarnessStopsCleanly(t *testing.T) {
	h := newFrameHarness(t)
	for _, s := range fuzzFrameSeeds() {
		if len(s) > 0 {
			h.send(t, s)
		}
	}
	h.checkAlive(t)
	done := make(chan struct{})
	go func() {
		h.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		// Seen once in CI and never reproduced: say where it hung.
		var stacks strings.Builder
		pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		t.Fatalf("the stack did not stop within 30 s, at %q; goroutines:\n%s", h.closeStage.Load(), stacks.String())
	}
	if p := h.readErr.Load(); p != nil && !errors.Is(*p, os.ErrClosed) {
		t.Errorf("read loop ended with %v", *p)
	}
}
