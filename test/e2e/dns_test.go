package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/rootlessnet/rootlessnet/test/world"
)

func init() {
	extraHelpers["dns-many"] = func(args []string) error {
		sequential, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		parallel, err := strconv.Atoi(args[3])
		if err != nil {
			return err
		}
		return dnsMany(args[0], args[1], sequential, parallel)
	}
	extraHelpers["dns-big"] = func(args []string) error { return dnsBig(args[0], args[1]) }
}

// TestDNSManyLookups makes lookups as resolvers do, each from a new UDP
// socket, to the DNS address (which the fast path answers past the
// netstack), one after another and then many at once: every one must be
// answered, by the upstream, with its own ID. Then an answer larger than
// the link's MTU (--mtu 1500): over UDP the resolver gets its header and
// question with TC set, and over TCP the whole of it.
func TestDNSManyLookups(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		_, log := e.w.DNS(t, "198.51.100.1:53")
		const sequential, parallel = 1000, 200
		// The link's loop waits in its own epoll_wait with the TCP fast path,
		// in Go's poller without it.
		for _, flags := range [][]string{nil, {"--tcp-fastpath=false"}} {
			before := log.Len()
			out := e.mustOK(flags, "dns-many", "10.0.2.3:53", world.DNSName, fmt.Sprint(sequential), fmt.Sprint(parallel))
			if !strings.Contains(out, fmt.Sprintf("answered %d", sequential+parallel)) {
				t.Errorf("%v: not every lookup answered:\n%s", flags, out)
			}
			if n := log.Len() - before; n < sequential+parallel {
				t.Errorf("%v: the upstream saw %d queries, want %d", flags, n, sequential+parallel)
			}

			for _, mtu := range []string{"1500", "65520"} {
				out = e.mustOK(append([]string{"--mtu", mtu}, flags...), "dns-big", "10.0.2.3:53", world.DNSBigName)
				udp := "udp tc=true txt=0"
				if mtu == "65520" {
					// The whole answer fits one datagram.
					udp = fmt.Sprintf("udp tc=false txt=%d", world.DNSBigTXTStrings*250)
				}
				for _, want := range []string{udp, fmt.Sprintf("tcp tc=false txt=%d", world.DNSBigTXTStrings*250)} {
					if !strings.Contains(out, want) {
						t.Errorf("%v --mtu %s: want %q:\n%s", flags, mtu, want, out)
					}
				}
			}
		}
	})
}

// dnsMany makes sequential lookups of name at server, each from a socket
// of its own, then parallel ones at once; each must get the A record
// world.DNS serves, with its own ID.
func dnsMany(server, name string, sequential, parallel int) error {
	addr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return err
	}
	lookup := func() error {
		c, err := net.DialUDP("udp", nil, addr)
		if err != nil {
			return err
		}
		defer c.Close()
		var q dns.Msg
		q.SetQuestion(name, dns.TypeA)
		q.Id = uint16(rand.Uint32())
		b, err := q.Pack()
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(b); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("port %d: %w", c.LocalAddr().(*net.UDPAddr).Port, err)
		}
		var r dns.Msg
		if err := r.Unpack(buf[:n]); err != nil {
			return err
		}
		if r.Id != q.Id || len(r.Answer) != 1 {
			return fmt.Errorf("answer %v to query %d", &r, q.Id)
		}
		if a, ok := r.Answer[0].(*dns.A); !ok || a.A.String() != world.DNSAddrV4.String() {
			return fmt.Errorf("answer %v", &r)
		}
		return nil
	}
	answered := 0
	for range sequential {
		if err := lookup(); err != nil {
			return fmt.Errorf("after %d answers: %w", answered, err)
		}
		answered++
	}
	var wg sync.WaitGroup
	errs := make(chan error, parallel)
	for range parallel {
		wg.Go(func() { errs <- lookup() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return fmt.Errorf("parallel lookup: %w", err)
		}
		answered++
	}
	fmt.Printf("answered %d\n", answered)
	return nil
}

// dnsBig asks for name's TXT record over UDP (EDNS0, 4096 bytes) and
// over TCP and prints whether each answer was truncated and the TXT
// bytes it had.
func dnsBig(server, name string) error {
	for _, network := range []string{"udp", "tcp"} {
		cl := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 4096}
		var q dns.Msg
		q.SetQuestion(name, dns.TypeTXT)
		q.SetEdns0(4096, false)
		r, _, err := cl.Exchange(&q, server)
		if err != nil {
			return fmt.Errorf("%s: %w", network, err)
		}
		if r.Id != q.Id || len(r.Question) != 1 || r.Question[0] != q.Question[0] {
			return fmt.Errorf("%s: answer %v to %v", network, r, &q)
		}
		txt := 0
		for _, rr := range r.Answer {
			if rr, ok := rr.(*dns.TXT); ok {
				for _, s := range rr.Txt {
					txt += len(s)
				}
			}
		}
		fmt.Printf("%s tc=%v txt=%d\n", network, r.Truncated, txt)
	}
	return nil
}
