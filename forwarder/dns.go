package forwarder

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/rootlessnet/rootlessnet/relay"
)

// DNS forwarding relays the query bytes to the upstreams and the answer
// bytes back unchanged; miekg/dns is used only to build SERVFAIL for a
// query no upstream answered, which a hand-written encoder would get wrong
// for EDNS and odd queries.
const (
	dnsAttemptTimeout = 2 * time.Second
	// dnsFlowIdle ends a DNS-over-TCP connection; dnsUDPFlowIdle a UDP
	// flow to the DNS address. Resolvers make a UDP flow per lookup, so
	// that a flow held for long only holds memory (a goroutine and a
	// netstack endpoint each) and a place under --max-flows. libslirp
	// expires a port-53 socket 10 s after its answer (SO_EXPIREFAST).
	// A query after that makes a new flow, answered alike.
	dnsFlowIdle    = 30 * time.Second
	dnsUDPFlowIdle = 10 * time.Second
	maxDNSMessage  = 65535
)

// Names answers DNS queries for local names: the reply, or nil when the
// upstreams should answer.
type Names interface {
	Answer(q *dns.Msg) *dns.Msg
}

// localAnswer is cfg.Names' reply to query, packed, or nil.
func (f *Forwarder) localAnswer(query []byte) []byte {
	if f.cfg.Names == nil {
		return nil
	}
	var q dns.Msg
	if q.Unpack(query) != nil {
		return nil
	}
	r := f.cfg.Names.Answer(&q)
	if r == nil {
		return nil
	}
	b, err := r.Pack()
	if err != nil {
		return nil
	}
	return b
}

// serveDNS answers the queries of one container UDP flow to the DNS
// address until it is idle. With the UDP shortcut on, the queries come
// here only when the shortcut did not take them (dnsudp.go).
func (f *Forwarder) serveDNS(guest *gonet.UDPConn, ep tcpip.Endpoint, wq *waiter.Queue) {
	defer guest.Close()
	stop := context.AfterFunc(f.ctx, func() { guest.Close() })
	defer stop()
	for {
		// No buffer held while idle (a resolver makes a flow per query).
		bp, n, err := relay.ReadGuest(guest, ep, wq, time.Now().Add(f.cfg.DNSIdleTimeout))
		if err != nil {
			return
		}
		query := append([]byte(nil), (*bp)[:n]...)
		relay.PutDatagram(bp)
		if n < dnsHeaderSize { // nothing to answer
			continue
		}
		select {
		case f.dnsSlots <- struct{}{}:
		default:
			f.log.Debug("dns: too many queries in flight; dropping one")
			continue
		}
		if !f.goFlow(func() {
			defer func() { <-f.dnsSlots }()
			reply := f.localAnswer(query)
			if reply == nil {
				reply = f.exchangeUDP(query)
			}
			if reply != nil {
				guest.Write(reply)
			}
		}) {
			<-f.dnsSlots
			return
		}
	}
}

// exchangeUDP asks each upstream in turn and returns the first answer
// whose id matches, or SERVFAIL when none answers.
func (f *Forwarder) exchangeUDP(query []byte) []byte {
	id := binary.BigEndian.Uint16(query)
	for _, ns := range f.cfg.Nameservers {
		if f.ctx.Err() != nil {
			return nil
		}
		reply, err := exchangeOnce(ns.String(), query, id)
		if err == nil {
			return reply
		}
		f.log.Debug("dns upstream failed", "upstream", ns, "err", err)
	}
	return servfail(query)
}

// exchangeOnce sends query to upstream and returns the first answer with
// its id. The answer is read into a pooled buffer once it is there: a new
// 64 KiB buffer per query made the collector run 43 times in 3000
// lookups.
func exchangeOnce(upstream string, query []byte, id uint16) ([]byte, error) {
	c, err := net.DialTimeout("udp", upstream, dnsAttemptTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dnsAttemptTimeout))
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	for {
		bp, n, err := relay.ReadHost(c.(*net.UDPConn))
		if err != nil {
			return nil, err
		}
		b := (*bp)[:n]
		if n >= 12 && binary.BigEndian.Uint16(b) == id {
			reply := append([]byte(nil), b...)
			relay.PutDatagram(bp)
			return reply, nil
		}
		relay.PutDatagram(bp)
	}
}

func servfail(query []byte) []byte {
	var q dns.Msg
	if err := q.Unpack(query); err != nil {
		return nil
	}
	var m dns.Msg
	m.SetRcode(&q, dns.RcodeServerFailure)
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// dialDNSTCP connects to the first upstream that accepts TCP.
func (f *Forwarder) dialDNSTCP() (*net.TCPConn, error) {
	err := errors.New("no nameservers configured")
	for _, ns := range f.cfg.Nameservers {
		var c net.Conn
		c, err = net.DialTimeout("tcp", ns.String(), dnsAttemptTimeout)
		if err == nil {
			return c.(*net.TCPConn), nil
		}
	}
	return nil, err
}

// serveDNSTCPFailure accepts a DNS-over-TCP connection and answers each
// query with SERVFAIL until the client closes or goes quiet.
func (f *Forwarder) serveDNSTCPFailure(r *tcp.ForwarderRequest) {
	f.serveDNSTCPMessages(r, servfail)
}

// serveDNSTCPNames accepts a DNS-over-TCP connection and answers each
// query from cfg.Names, or else from an upstream over TCP (SERVFAIL when
// none answers).
func (f *Forwarder) serveDNSTCPNames(r *tcp.ForwarderRequest) {
	f.serveDNSTCPMessages(r, func(q []byte) []byte {
		if reply := f.localAnswer(q); reply != nil {
			return reply
		}
		if reply, err := f.exchangeTCP(q); err == nil {
			return reply
		}
		return servfail(q)
	})
}

// exchangeTCP asks the first upstream that takes TCP.
func (f *Forwarder) exchangeTCP(query []byte) ([]byte, error) {
	c, err := f.dialDNSTCP()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dnsAttemptTimeout))
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(query)))
	if _, err := c.Write(append(msg, query...)); err != nil {
		return nil, err
	}
	var lenBuf [2]byte
	if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
		return nil, err
	}
	reply := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
	if _, err := io.ReadFull(c, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// serveDNSTCPMessages accepts a DNS-over-TCP connection and answers each
// query with answer's reply until the client closes or goes quiet.
func (f *Forwarder) serveDNSTCPMessages(r *tcp.ForwarderRequest, answer func(query []byte) []byte) {
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		r.Complete(true)
		return
	}
	r.Complete(false)
	if !f.addFlow() {
		ep.Close()
		return
	}
	defer f.wg.Done()
	c := gonet.NewTCPConn(&wq, ep)
	defer c.Close()
	stop := context.AfterFunc(f.ctx, func() { c.Close() })
	defer stop()
	var lenBuf [2]byte
	for {
		c.SetDeadline(time.Now().Add(dnsFlowIdle))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		reply := answer(q)
		if reply == nil {
			return
		}
		if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(reply)))); err != nil {
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}
