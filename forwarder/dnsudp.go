package forwarder

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// Queries to the DNS address over UDP skip the netstack where the UDP
// shortcut is on. A resolver makes a new flow, from a new source port, for
// each lookup: through the stack each cost a forwarder request, an
// endpoint, a goroutine waiting out dnsUDPFlowIdle and a place under
// --max-flows, and then a goroutine that dialled a socket to the
// upstream, for one datagram each way. Now the link's read loop hands
// every datagram to the DNS address's port 53 to the mux's service, which
// sends it to the upstream at once from a socket served on the same loop
// (eventloop), and the loop writes the answer to the container with
// WriteUDP: no goroutine, no flow, no stack.
//
// A goroutine per query, as serveDNS has, did not pay: the loop keeps
// its P while it waits for the next frame, so the goroutine waited for
// another thread to steal it, and 3000 lookups through the service took
// as long as through the stack (p50 about 300 µs against 50 µs direct).
//
// Upstream sockets. A fresh socket per query, from a random port, is what
// makes a forged answer hard to place (Kaminsky): an off-path attacker
// must guess the port as well as the ID. That holds for upstreams
// elsewhere, which keep a socket per query here too. An answer from a
// loopback upstream (systemd-resolved's 127.0.0.53, a local dnsmasq)
// cannot be forged from outside the host (the kernel drops packets from
// outside with loopback addresses) nor by another local user (a
// connected socket takes only the upstream's address and port, which the
// upstream holds), so its queries share one long-lived socket: no socket,
// connect, epoll registration and close per query (rootlessnet's CPU per
// lookup 36 µs instead of 54-68 µs on the test machine, where the three
// processes of a lookup mostly take turns on one CPU). Either way every query goes out with an ID of
// its own drawn at random (which also keeps the clients' IDs apart on a
// shared socket), and an answer is taken only for the ID and question it
// was sent with; the client's ID is put back.
//
// What stays as it was: the upstreams are asked in turn, each for
// dnsAttemptTimeout (at once on an ICMP error), SERVFAIL once all failed;
// local names answer first; no more than dnsSlots queries are in flight
// (more are dropped: the resolver asks again). Datagrams the shortcut
// does not parse (IP fragments, options) still reach the stack and
// serveDNS; so do all queries where there is no shortcut (a pcap, a
// rootless network's bridge). DNS over TCP is unchanged.

// dnsHeaderSize is a DNS message's fixed header: a shorter datagram is
// not a query.
const dnsHeaderSize = 12

// dnsMux answers the UDP queries to the DNS address past the stack.
type dnsMux struct {
	f       *Forwarder
	sc      UDPShortcut
	poll    Poller
	unserve []func()
	// timeout is each attempt's (dnsAttemptTimeout); sharedLoopback
	// lets loopback upstreams' queries share a socket. Tests change
	// them.
	timeout        time.Duration
	sharedLoopback bool

	mu     sync.Mutex
	closed bool
	// shared is each loopback upstream's socket (by its index in
	// cfg.Nameservers), nil until the first query to it and after an
	// error.
	shared []*dnsSock
	// socks are every open socket, for close.
	socks map[*dnsSock]struct{}
	// due are the attempts in flight, in the order of their deadlines
	// (all timeout after their send): the timer fires for the
	// first. Answered ones stay until the timer passes them.
	due   []dnsDue
	timer *time.Timer
	armed bool
	// buf takes each answer read (under mu); made at the first.
	buf []byte
}

// dnsQuery is one query from the container, through its attempts.
type dnsQuery struct {
	// msg is the query; its ID is the upstream's while one is asked.
	msg []byte
	id  uint16 // the client's
	// nameLen is the length of the question's name after the header:
	// an answer must have it too (case aside), with the same type and
	// class. 0: the query has no question that could be read, and the
	// ID alone matches (as the socket per query matched before).
	nameLen int
	// from, to are the reply's addresses: the DNS address, the client.
	from, to netip.AddrPort

	upstream int // the index of the upstream asked
	sock     *dnsSock
	upID     uint16
	n        uint32 // the attempt's number: due entries of earlier ones are stale
	done     bool
}

// dnsDue is an attempt's deadline.
type dnsDue struct {
	q  *dnsQuery
	n  uint32
	at time.Time
}

// dnsSock is a connected socket to one upstream, served on the loop.
type dnsSock struct {
	m        *dnsMux
	fd       int
	upstream int
	shared   bool
	pending  map[uint16]*dnsQuery // by the ID sent
	// retired: it takes no more queries, and is closed once none is
	// pending (a socket per query retires with its send).
	retired bool
	closed  bool
}

// newDNSMux registers the DNS service on the DNS addresses' port 53 with
// the UDP shortcut, when there is one (and a loop) and DNS is on; nil
// otherwise.
func newDNSMux(f *Forwarder) *dnsMux {
	p := f.cfg.Policy
	if f.cfg.UDPShortcut == nil || f.cfg.Poller == nil || p.DisableDNS {
		return nil
	}
	m := &dnsMux{
		f:      f,
		sc:     f.cfg.UDPShortcut,
		poll:   f.cfg.Poller,
		shared: make([]*dnsSock, len(f.cfg.Nameservers)),
		socks:  map[*dnsSock]struct{}{},

		timeout:        dnsAttemptTimeout,
		sharedLoopback: true,
	}
	m.timer = time.AfterFunc(time.Hour, m.expire)
	m.timer.Stop()
	for _, a := range []netip.Addr{p.DNS, p.DNS6} {
		if a.IsValid() {
			addr := netip.AddrPortFrom(a, 53)
			m.unserve = append(m.unserve, m.sc.AddUDPService(addr, m.service(addr)))
		}
	}
	return m
}

// close removes the services and closes every socket; queries in flight
// get no answer.
func (m *dnsMux) close() {
	for _, remove := range m.unserve {
		remove()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.timer.Stop()
	for s := range m.socks {
		m.closeSock(s)
	}
	m.due = nil
}

// service takes the queries to addr on the read loop.
func (m *dnsMux) service(addr netip.AddrPort) UDPService {
	f := m.f
	return func(src netip.AddrPort, payload [][]byte) {
		n := 0
		for _, p := range payload {
			n += len(p)
		}
		if n < dnsHeaderSize { // nothing to answer
			return
		}
		select {
		case f.dnsSlots <- struct{}{}:
		default:
			f.log.Debug("dns: too many queries in flight; dropping one")
			return
		}
		msg := make([]byte, 0, n)
		for _, p := range payload {
			msg = append(msg, p...)
		}
		if reply := f.localAnswer(msg); reply != nil {
			f.replyDNS(addr, src, msg, reply)
			<-f.dnsSlots
			return
		}
		q := &dnsQuery{msg: msg, id: binary.BigEndian.Uint16(msg), nameLen: questionNameLen(msg), from: addr, to: src}
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.closed {
			<-f.dnsSlots
			return
		}
		m.ask(q, 0)
	}
}

// ask sends q to upstream i, or the first after it that takes it;
// SERVFAIL when none is left.
func (m *dnsMux) ask(q *dnsQuery, i int) {
	ns := m.f.cfg.Nameservers
	for ; i < len(ns); i++ {
		s, err := m.socket(i)
		if err != nil {
			m.f.log.Debug("dns upstream failed", "upstream", ns[i], "err", err)
			continue
		}
		upID := s.freeID()
		binary.BigEndian.PutUint16(q.msg, upID)
		if _, err := eventloop.Write(s.fd, q.msg); err != nil {
			m.f.log.Debug("dns upstream failed", "upstream", ns[i], "err", err)
			switch {
			case !s.shared:
				m.retire(s)
			case err != unix.EAGAIN:
				// An ICMP error for an earlier query (ECONNREFUSED)
				// is the upstream's: the others pending fail over
				// too.
				m.fail(s)
			}
			continue
		}
		q.upstream, q.sock, q.upID = i, s, upID
		q.n++
		s.pending[upID] = q
		if !s.shared {
			s.retired = true
		}
		m.due = append(m.due, dnsDue{q: q, n: q.n, at: time.Now().Add(m.timeout)})
		if !m.armed {
			m.arm()
		}
		return
	}
	binary.BigEndian.PutUint16(q.msg, q.id)
	m.finish(q, servfail(q.msg))
}

// finish sends reply (nil: none) to q's client and frees q's place.
func (m *dnsMux) finish(q *dnsQuery, reply []byte) {
	q.done = true
	binary.BigEndian.PutUint16(q.msg, q.id)
	if reply != nil {
		binary.BigEndian.PutUint16(reply, q.id)
		m.f.replyDNS(q.from, q.to, q.msg, reply)
	}
	q.msg = nil
	<-m.f.dnsSlots
}

// socket returns a socket to upstream i: the shared one of a loopback
// upstream, or a new one.
func (m *dnsMux) socket(i int) (*dnsSock, error) {
	up := m.f.cfg.Nameservers[i]
	shared := m.sharedLoopback && up.Addr().Unmap().IsLoopback()
	if shared && m.shared[i] != nil {
		return m.shared[i], nil
	}
	fd, err := dialUpstream(up)
	if err != nil {
		m.f.hostSocketFailed(err)
		return nil, err
	}
	m.f.hostSocketMade()
	s := &dnsSock{m: m, fd: fd, upstream: i, shared: shared, pending: map[uint16]*dnsQuery{}}
	if err := m.poll.Add(fd, eventloop.Level, s); err != nil {
		unix.Close(fd)
		return nil, err
	}
	m.socks[s] = struct{}{}
	if shared {
		m.shared[i] = s
	}
	return s, nil
}

// dialUpstream makes a non-blocking UDP socket connected to up.
func dialUpstream(up netip.AddrPort) (int, error) {
	a := up.Addr().Unmap()
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(up.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: int(up.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			} else if n, err := strconv.ParseUint(z, 10, 32); err == nil {
				sa6.ZoneId = uint32(n)
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// freeID draws an ID that no query pending on s has.
func (s *dnsSock) freeID() uint16 {
	for {
		id := uint16(rand.Uint32())
		if s.pending[id] == nil {
			return id
		}
	}
}

// OnPoll reads an answer from s, on the loop. The socket is
// level-triggered: one read per event, as the loop reports a socket with
// more queued again (reading on to EAGAIN cost a syscall per answer).
func (s *dnsSock) OnPoll(uint32) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.closed {
		return
	}
	if m.buf == nil {
		m.buf = make([]byte, maxDNSMessage)
	}
	n, err := eventloop.Read(s.fd, m.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
	case err != nil:
		// An ICMP error (ECONNREFUSED: nothing listens there) fails
		// every query pending on s over to the next upstream, as each
		// socket of its own failed before.
		m.f.log.Debug("dns upstream failed", "upstream", m.f.cfg.Nameservers[s.upstream], "err", err)
		m.fail(s)
	default:
		m.answer(s, m.buf[:n])
	}
	m.tidy(s)
}

// answer takes b, read from s, as the answer to the query pending with
// its ID when the question matches too; anything else is dropped.
func (m *dnsMux) answer(s *dnsSock, b []byte) {
	if len(b) < dnsHeaderSize {
		return
	}
	upID := binary.BigEndian.Uint16(b)
	q := s.pending[upID]
	if q == nil || !q.matches(b) {
		return
	}
	delete(s.pending, upID)
	m.finish(q, b)
}

// matches reports whether b is an answer to q's question.
func (q *dnsQuery) matches(b []byte) bool {
	if q.nameLen == 0 {
		return true
	}
	if binary.BigEndian.Uint16(b[4:6]) == 0 {
		// An error without the question (REFUSED, FORMERR from some
		// servers) is still the upstream's answer.
		return b[3]&0xf != dns.RcodeSuccess
	}
	end := dnsHeaderSize + q.nameLen
	return len(b) >= end+4 && foldEqual(b[dnsHeaderSize:end], q.msg[dnsHeaderSize:end]) &&
		string(b[end:end+4]) == string(q.msg[end:end+4])
}

// questionNameLen is the length of the first question's name of msg, a
// query (uncompressed: nothing precedes it), or 0 when it has none or it
// cannot be read.
func questionNameLen(msg []byte) int {
	if binary.BigEndian.Uint16(msg[4:6]) == 0 {
		return 0
	}
	off := dnsHeaderSize
	for {
		if off >= len(msg) {
			return 0
		}
		l := int(msg[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 {
			return 0
		}
		off += l
	}
	if off+4 > len(msg) {
		return 0
	}
	return off - dnsHeaderSize
}

// foldEqual compares names in wire form, ASCII case aside (a label's
// length byte is at most 63, below 'A').
func foldEqual(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// fail retires s and moves its pending queries on to the next upstream.
func (m *dnsMux) fail(s *dnsSock) {
	m.retire(s)
	for upID, q := range s.pending {
		delete(s.pending, upID)
		m.ask(q, q.upstream+1)
	}
	m.tidy(s)
}

// retire takes s out of use; it closes once no query is pending on it.
func (m *dnsMux) retire(s *dnsSock) {
	s.retired = true
	if s.shared && m.shared[s.upstream] == s {
		m.shared[s.upstream] = nil
	}
	m.tidy(s)
}

// tidy closes s once it is retired and has nothing pending.
func (m *dnsMux) tidy(s *dnsSock) {
	if s.retired && len(s.pending) == 0 && !s.closed {
		m.closeSock(s)
	}
}

func (m *dnsMux) closeSock(s *dnsSock) {
	if s.closed {
		return
	}
	s.closed = true
	m.poll.Forget(s.fd)
	unix.Close(s.fd)
	delete(m.socks, s)
}

// arm sets the timer for the first deadline.
func (m *dnsMux) arm() {
	m.armed = true
	m.timer.Reset(time.Until(m.due[0].at))
}

// expire fails the attempts whose deadline passed over to the next
// upstream, on the timer's goroutine.
func (m *dnsMux) expire() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.armed = false
	now := time.Now()
	var late []*dnsQuery
	i := 0
	for ; i < len(m.due); i++ {
		d := m.due[i]
		if d.q.done || d.q.n != d.n {
			continue // answered, or moved on
		}
		if d.at.After(now) {
			break
		}
		late = append(late, d.q)
	}
	left := copy(m.due, m.due[i:])
	clear(m.due[left:])
	m.due = m.due[:left]
	for _, q := range late {
		s := q.sock
		if s.pending[q.upID] == q {
			delete(s.pending, q.upID)
		}
		m.tidy(s)
		m.f.log.Debug("dns upstream failed", "upstream", m.f.cfg.Nameservers[q.upstream], "err", errDNSTimeout)
		m.ask(q, q.upstream+1)
	}
	if len(m.due) > 0 && !m.armed {
		m.arm()
	}
}

var errDNSTimeout = errors.New("no answer in time")

// replyDNS sends reply to the container's to from the DNS address from,
// past the stack. WriteUDP refuses a datagram larger than the link's MTU
// (the stack would have sent IP fragments): the resolver then gets the
// reply's header and question with TC set, and asks again over TCP (RFC
// 7766), which the stack serves.
func (f *Forwarder) replyDNS(from, to netip.AddrPort, query, reply []byte) {
	sc := f.cfg.UDPShortcut
	if sc.WriteUDP(from, to, reply) {
		return
	}
	// With the OPT record (RFC 6891: a reply to an EDNS query has one),
	// and without it should that not fit either.
	for _, withOPT := range []bool{true, false} {
		tc := truncatedReply(query, reply, withOPT)
		if tc != nil && len(tc) < len(reply) && sc.WriteUDP(from, to, tc) {
			return
		}
	}
	f.log.Debug("dns: reply not delivered", "to", to, "size", len(reply))
}

// truncatedReply is reply cut to its header and question, with TC set;
// withOPT keeps its OPT record. The question is the query's where reply's
// cannot be read; nil when neither can.
func truncatedReply(query, reply []byte, withOPT bool) []byte {
	if len(reply) < dnsHeaderSize {
		return nil
	}
	var m dns.Msg
	err := m.Unpack(reply) // the header is read even on an error
	t := dns.Msg{MsgHdr: m.MsgHdr, Question: m.Question}
	t.Truncated = true
	if err != nil {
		var q dns.Msg
		if q.Unpack(query) != nil || len(q.Question) == 0 {
			return nil
		}
		t.Question = q.Question
	} else if opt := m.IsEdns0(); opt != nil && withOPT {
		t.Extra = []dns.RR{opt}
	}
	if t.IsEdns0() == nil {
		t.Rcode &= 0xf // the extended bits live in the OPT record
	}
	b, err := t.Pack()
	if err != nil {
		return nil
	}
	return b
}
