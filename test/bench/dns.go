package main

// -dns: DNS lookup latency through each tool's DNS forwarding (issue
// 18), against a DNS server of the bench on the host's loopback, and the
// same client on the host against that server directly.

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

const colDirect = "direct"

var dnsFigures = []modeFigure{
	{id: "dns-p50", label: "DNS A lookup, a new UDP socket each, p50, µs (lower is better)", format: "%.0f", ref: true},
	{id: "dns-p99", label: "DNS A lookup, a new UDP socket each, p99, µs (lower is better)", format: "%.0f", ref: true},
	{id: "dns-lost", label: "lookups unanswered within 2 s (of the run's lookups, summed over runs)", format: "%.0f", noRatio: true, ref: true},
}

type dnsBench struct {
	cfg     *config
	rec     *recorder
	srv     *dnsServer
	lookups int
}

func (db *dnsBench) add(col string, r udpLatencyResult, err error) {
	if err != nil {
		db.rec.fail(col, "dns-p50, dns-p99, dns-lost", err)
		return
	}
	if r.Lost > 0 {
		fmt.Fprintf(os.Stderr, "bench: %s: DNS: %d lookups unanswered within 2 s (not in the percentiles)\n", col, r.Lost)
	}
	db.rec.add(col, "dns-p50", r.P50us)
	db.rec.add(col, "dns-p99", r.P99us)
	db.rec.add(col, "dns-lost", float64(r.Lost))
}

// measure: the helper in the namespace looks names up at the tool's DNS
// address.
func (db *dnsBench) measure(s *session) {
	var r udpLatencyResult
	err := runHelper(s, db.cfg, 3*time.Minute, &r, "dnsq", net.JoinHostPort(dnsAddr, "53"), fmt.Sprint(db.lookups))
	db.add(s.t.name, r, err)
}

// measureDirect: the same client on the host, straight to the server.
func (db *dnsBench) measureDirect() {
	var r udpLatencyResult
	err := runHostHelper(db.cfg, 3*time.Minute, &r, "dnsq", net.JoinHostPort(db.srv.ip, "53"), fmt.Sprint(db.lookups))
	db.add(colDirect, r, err)
}

// runDNS is the -dns mode.
func runDNS(cfg *config, tools []*tool, runs, lookups int, bin string) (string, error) {
	srv, err := startDNSServer()
	if err != nil {
		return "", fmt.Errorf("DNS server: %w", err)
	}
	defer srv.close()
	db := &dnsBench{cfg: cfg, rec: &recorder{vals: map[[2]string][]float64{}}, srv: srv, lookups: lookups}
	steps := []toolStep{{
		name: "dns",
		figs: []string{"dns-p50", "dns-p99", "dns-lost"},
		opts: sessionOpts{resolvConf: "nameserver " + srv.ip + "\n"},
		f:    db.measure,
	}}
	desc := fmt.Sprintf("Machine: %s. Tools: %s.", machine(), versions(bin))
	start := time.Now()
	runToolSteps(cfg, tools, runs, []benchStep{{"direct", db.measureDirect}}, steps, db.rec)
	elapsed := time.Since(start)
	// Lost lookups: the sum over runs, not the median.
	for _, col := range append(toolNames(tools), colDirect) {
		k := [2]string{col, "dns-lost"}
		if v := db.rec.vals[k]; len(v) > 0 {
			sum := 0.0
			for _, x := range v {
				sum += x
			}
			db.rec.vals[k] = []float64{sum}
		}
	}

	names := toolNames(tools)
	var b strings.Builder
	fmt.Fprintf(&b, "\n## DNS (%s)\n\nMedian of %d runs of %d lookups each. %s\n\n", time.Now().UTC().Format("2006-01-02"), runs, lookups, desc)
	renderToolTable(&b, db.rec, cfg, dnsFigures, names, colDirect, "direct (host client -> server)")
	fmt.Fprintf(&b, `
Notes (whole run %.0f s):
- Server: a DNS server of the bench (github.com/miekg/dns) on the host's %s:53 (UDP; 127.0.0.53 if 127.0.0.1:53 is taken), answering every A query with one A record (%s, TTL 0).
- Each tool serves a fresh user+network namespace (unshare -Urn, as uid 65534) at MTU 65520 per run, interleaved, and is told to use that server through a resolv.conf of the bench's holding "nameserver %s": rootlessnet with --resolv-conf FILE; slirp4netns and pasta read /etc/resolv.conf, so they run in a mount namespace of their own with FILE bind-mounted over /etc/resolv.conf (unshare --mount --propagation private as root, mount --bind, then setpriv --reuid 65534 --regid 65534 --clear-groups --pdeathsig KILL to exec the tool), pasta also with --dns-forward %s. The namespace's client asks %s:53 with every tool (rootlessnet's and slirp4netns' DNS address, pasta's by --dns-forward), which each tool forwards to the server. %s
- Client: the bench's helper in the namespace (nsenter) makes 50 warm-up then %d lookups one after the other, each of a distinct name (hN.bench.test, type A) on a new UDP socket (socket, connect, send, receive, close, as a stub resolver does), timed from the socket's creation to the answer, which must carry the query's id and one A record, the server's %s; p50/p99 over the run. A lookup unanswered within 2 s is counted (dns-lost row, the sum over the runs), not timed; more than 20 fail the run.
- direct (the reference column): the same helper on the host (as uid 65534) against %s:53, no tool in the path.
- Ratios are rootlessnet/peer and rootlessnet/direct of the medians; below 1 favours rootlessnet. n/a: the figure failed (reason on stderr).
`, elapsed.Seconds(), srv.ip, dnsAnswer, srv.ip, dnsAddr, dnsAddr, toolsNote(names), lookups, dnsAnswer, srv.ip)
	return b.String(), nil
}
