package netd

import (
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Names answers DNS queries for a network's members: NAME and
// NAME.NETWORK (A, AAAA), and the reverse names of their addresses (PTR).
// Anything else is left to the upstreams, except NETWORK's own domain,
// where a name that is no member's gets NXDOMAIN. It is safe for
// concurrent use.
type Names struct {
	domain string // "network." lower-cased
	ttl    uint32

	mu     sync.RWMutex
	byName map[string][]netip.Addr // lower-cased bare name
	byAddr map[netip.Addr]string
	// remote holds the other hosts' members of an overlay, by host
	// (Gossip); a local name wins over a remote one.
	remote map[string]map[string][]netip.Addr
}

// NewNames returns an empty table for network.
func NewNames(network string) *Names {
	return &Names{
		domain: strings.ToLower(dns.Fqdn(network)),
		ttl:    5, // members come and go: answers must not be held long
		byName: map[string][]netip.Addr{},
		byAddr: map[netip.Addr]string{},
		remote: map[string]map[string][]netip.Addr{},
	}
}

// Local returns this host's members: name -> addresses.
func (n *Names) Local() map[string][]netip.Addr {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make(map[string][]netip.Addr, len(n.byName))
	for k, v := range n.byName {
		out[k] = append([]netip.Addr(nil), v...)
	}
	return out
}

// SetRemote replaces what host (another host of the overlay) has; nil
// forgets it.
func (n *Names) SetRemote(host string, members map[string][]netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if members == nil {
		delete(n.remote, host)
		return
	}
	m := make(map[string][]netip.Addr, len(members))
	for k, v := range members {
		m[strings.ToLower(k)] = v
	}
	n.remote[host] = m
}

// lookup returns a name's addresses, local first; the caller holds mu.
func (n *Names) lookup(name string) ([]netip.Addr, bool) {
	if a, ok := n.byName[name]; ok {
		return a, true
	}
	hosts := make([]string, 0, len(n.remote))
	for h := range n.remote {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts) // the same answer every time when two hosts clash
	for _, h := range hosts {
		if a, ok := n.remote[h][name]; ok {
			return a, true
		}
	}
	return nil, false
}

// reverse returns the name of an address; the caller holds mu.
func (n *Names) reverse(a netip.Addr) (string, bool) {
	if name, ok := n.byAddr[a]; ok {
		return name, true
	}
	for _, members := range n.remote {
		for name, addrs := range members {
			for _, x := range addrs {
				if x == a {
					return name, true
				}
			}
		}
	}
	return "", false
}

// Add records a member's name and addresses.
func (n *Names) Add(name string, addrs ...netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := strings.ToLower(name)
	for _, a := range addrs {
		if a.IsValid() {
			n.byName[key] = append(n.byName[key], a)
			n.byAddr[a] = name
		}
	}
}

// Remove forgets a member.
func (n *Names) Remove(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := strings.ToLower(name)
	for _, a := range n.byName[key] {
		delete(n.byAddr, a)
	}
	delete(n.byName, key)
}

// Answer returns the reply to q when the name is the network's to answer,
// or nil.
func (n *Names) Answer(q *dns.Msg) *dns.Msg {
	if len(q.Question) != 1 || q.Response || q.Opcode != dns.OpcodeQuery {
		return nil
	}
	question := q.Question[0]
	if question.Qclass != dns.ClassINET {
		return nil
	}
	name := strings.ToLower(question.Name)
	r := new(dns.Msg)
	r.SetReply(q)
	r.Authoritative = true
	r.RecursionAvailable = true
	n.mu.RLock()
	defer n.mu.RUnlock()
	if question.Qtype == dns.TypePTR {
		a, ok := reverseAddr(name)
		if !ok {
			return nil
		}
		member, ok := n.reverse(a)
		if !ok {
			return nil
		}
		r.Answer = append(r.Answer, &dns.PTR{
			Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: n.ttl},
			Ptr: dns.Fqdn(member + "." + strings.TrimSuffix(n.domain, ".")),
		})
		return r
	}
	bare := strings.TrimSuffix(name, ".")
	inDomain := strings.HasSuffix(name, "."+n.domain)
	if inDomain {
		bare = strings.TrimSuffix(name, "."+n.domain)
	}
	addrs, known := n.lookup(bare)
	if !known || strings.Contains(bare, ".") {
		if inDomain || name == n.domain {
			r.Rcode = dns.RcodeNameError
			return r
		}
		return nil // not ours: the upstreams answer
	}
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: question.Name, Class: dns.ClassINET, Ttl: n.ttl}
		switch {
		case a.Is4() && question.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && question.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	// A member's name with no record of the type asked: NOERROR with no
	// answer (NODATA), so that the resolver does not ask elsewhere.
	return r
}

// reverseAddr parses a reverse-lookup name (in-addr.arpa or ip6.arpa).
func reverseAddr(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa."):
		labels := strings.Split(strings.TrimSuffix(name, ".in-addr.arpa."), ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(labels[3] + "." + labels[2] + "." + labels[1] + "." + labels[0])
		return a, err == nil
	case strings.HasSuffix(name, ".ip6.arpa."):
		nibbles := strings.Split(strings.TrimSuffix(name, ".ip6.arpa."), ".")
		if len(nibbles) != 32 {
			return netip.Addr{}, false
		}
		var b strings.Builder
		for i := 31; i >= 0; i-- {
			if len(nibbles[i]) != 1 {
				return netip.Addr{}, false
			}
			b.WriteString(nibbles[i])
			if i%4 == 0 && i != 0 {
				b.WriteByte(':')
			}
		}
		a, err := netip.ParseAddr(b.String())
		return a, err == nil
	}
	return netip.Addr{}, false
}
