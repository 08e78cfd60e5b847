package netd

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestNamesAnswer(t *testing.T) {
	n := NewNames("Lab")
	n.Add("db", netip.MustParseAddr("10.89.0.10"), netip.MustParseAddr("fd89::a"))
	n.Add("Web", netip.MustParseAddr("10.89.0.11"))
	for _, c := range []struct {
		name  string
		qtype uint16
		// want: "" for no local answer (the upstreams answer),
		// "NXDOMAIN", "NODATA", or the answer's data.
		want string
	}{
		{"db.", dns.TypeA, "10.89.0.10"},
		{"DB.lab.", dns.TypeA, "10.89.0.10"},
		{"db.lab.", dns.TypeAAAA, "fd89::a"},
		{"web.", dns.TypeA, "10.89.0.11"},
		{"web.", dns.TypeAAAA, "NODATA"},
		{"web.lab.", dns.TypeMX, "NODATA"},
		{"nobody.lab.", dns.TypeA, "NXDOMAIN"},
		{"lab.", dns.TypeA, "NXDOMAIN"},
		{"a.db.lab.", dns.TypeA, "NXDOMAIN"},
		{"example.com.", dns.TypeA, ""},
		{"nobody.", dns.TypeA, ""},
		{"db.other.", dns.TypeA, ""},
		{"10.0.89.10.in-addr.arpa.", dns.TypePTR, "db.lab."},
		{"a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.8.d.f.ip6.arpa.", dns.TypePTR, "db.lab."},
		{"99.0.89.10.in-addr.arpa.", dns.TypePTR, ""},
		{"1.2.3.in-addr.arpa.", dns.TypePTR, ""},
	} {
		q := new(dns.Msg)
		q.SetQuestion(c.name, c.qtype)
		r := n.Answer(q)
		got := ""
		switch {
		case r == nil:
		case r.Rcode == dns.RcodeNameError:
			got = "NXDOMAIN"
		case len(r.Answer) == 0:
			got = "NODATA"
		default:
			var parts []string
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *dns.A:
					parts = append(parts, rr.A.String())
				case *dns.AAAA:
					parts = append(parts, rr.AAAA.String())
				case *dns.PTR:
					parts = append(parts, rr.Ptr)
				}
				if rr.Header().Ttl == 0 || rr.Header().Name != c.name {
					t.Errorf("%s: answer header %v", c.name, rr.Header())
				}
			}
			got = strings.Join(parts, " ")
			if r.Id != q.Id || !r.Response || !r.Authoritative {
				t.Errorf("%s: reply header %v", c.name, r.MsgHdr)
			}
		}
		if got != c.want {
			t.Errorf("%s %s: got %q, want %q", c.name, dns.TypeToString[c.qtype], got, c.want)
		}
	}
	n.Remove("DB")
	q := new(dns.Msg)
	q.SetQuestion("db.lab.", dns.TypeA)
	if r := n.Answer(q); r == nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("a removed member still answers: %v", r)
	}
}

func TestNewConfig(t *testing.T) {
	p := netip.MustParsePrefix
	n0 := Config{Name: "a", Subnet: p("10.89.0.0/24")}
	n1 := Config{Name: "b", Subnet: p("10.89.1.0/24"), Subnet6: p("fd89::/64")}
	for _, c := range []struct {
		opts     Options
		existing []Config
		subnet   string
		subnet6  string
		err      string
	}{
		{Options{Name: "x"}, nil, "10.89.0.0/24", "", ""},
		{Options{Name: "x"}, []Config{n0, n1}, "10.89.2.0/24", "", ""},
		{Options{Name: "x", IPv6: true}, []Config{n0, n1}, "10.89.2.0/24", "fd89:0:0:1::/64", ""},
		{Options{Name: "x", Subnet: p("192.168.50.0/24")}, nil, "192.168.50.0/24", "", ""},
		{Options{Name: "x", Subnet: p("10.89.0.128/25")}, []Config{n0}, "", "", "overlaps network a's 10.89.0.0/24"},
		{Options{Name: "x", Subnet: p("10.0.0.0/8")}, nil, "", "", "overlaps 10.0.2.0/24"},
		{Options{Name: "x", Subnet: p("10.90.0.1/24")}, nil, "", "", "invalid --subnet"},
		{Options{Name: "x", Subnet: p("10.90.0.0/30")}, nil, "", "", "invalid --subnet"},
		{Options{Name: "x", Subnet6: p("fd89::/64")}, []Config{n1}, "", "", "overlaps network b's fd89::/64"},
		{Options{Name: "x", Subnet6: p("fd90::/48")}, nil, "", "", "invalid --subnet6"},
		{Options{Name: "a"}, []Config{n0}, "", "", "network a already exists"},
		{Options{Name: "-a"}, nil, "", "", "invalid network name"},
		{Options{Name: "x", MTU: 600}, nil, "", "", "invalid --mtu"},
	} {
		cfg, err := NewConfig(c.opts, c.existing)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%+v: err %v, want %q", c.opts, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%+v: %v", c.opts, err)
			continue
		}
		got6 := ""
		if cfg.Subnet6.IsValid() {
			got6 = cfg.Subnet6.String()
		}
		if cfg.Subnet.String() != c.subnet || got6 != c.subnet6 {
			t.Errorf("%+v: subnets %s %q, want %s %q", c.opts, cfg.Subnet, got6, c.subnet, c.subnet6)
		}
		if cfg.Gateway != offset(cfg.Subnet, 1) || cfg.DNS != offset(cfg.Subnet, 2) || cfg.MTU != DefaultMTU && c.opts.MTU == 0 {
			t.Errorf("%+v: %+v", c.opts, cfg)
		}
	}
}

func TestMemberAddress(t *testing.T) {
	p := netip.MustParsePrefix("10.89.0.0/28")
	var got []string
	for i := 0; ; i++ {
		a, ok := MemberAddress(p, i)
		if !ok {
			break
		}
		got = append(got, a.String())
	}
	// .10 to .14: .15 is the broadcast address.
	if strings.Join(got, " ") != "10.89.0.10 10.89.0.11 10.89.0.12 10.89.0.13 10.89.0.14" {
		t.Errorf("member addresses of %s: %v", p, got)
	}
	if a, ok := MemberAddress(netip.MustParsePrefix("10.89.0.0/24"), 244); !ok || a.String() != "10.89.0.254" {
		t.Errorf("last of a /24: %v %v", a, ok)
	}
	if _, ok := MemberAddress(netip.MustParsePrefix("10.89.0.0/24"), 245); ok {
		t.Error("the broadcast address was handed out")
	}
	if got := sameHost(netip.MustParsePrefix("10.89.0.0/24"), netip.MustParseAddr("10.89.0.10"), netip.MustParsePrefix("fd89::/64")); got.String() != "fd89::a" {
		t.Errorf("sameHost: %s", got)
	}
}
