package stack

import (
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

func TestParseCIDR6(t *testing.T) {
	a, err := ParseCIDR6("fd00::/64")
	if err != nil {
		t.Fatal(err)
	}
	if a.Gateway.String() != "fd00::2" || a.DNS.String() != "fd00::3" || a.Guest.String() != "fd00::100" || a.GuestPrefix().String() != "fd00::100/64" {
		t.Errorf("fd00::/64 -> gw %s dns %s guest %s", a.Gateway, a.DNS, a.Guest)
	}
	b, err := ParseCIDR6("2001:db8:1:2::/64")
	if err != nil || b.Guest.String() != "2001:db8:1:2::100" {
		t.Errorf("2001:db8:1:2::/64 -> %v %v", b.Guest, err)
	}
	for in, want := range map[string]string{
		"fd00::/48":      "must be /64",
		"fd00::1/64":     "did you mean fd00::/64",
		"10.0.2.0/24":    "want an IPv6 /64",
		"fe80::/64":      "unicast network",
		"ff02::/64":      "unicast network",
		"bogus":          "want an IPv6 /64",
		"::ffff:0:0/64":  "want an IPv6 /64",
		"fd00::%eth0/64": "want an IPv6 /64",
	} {
		if _, err := ParseCIDR6(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCIDR6(%q) = %v, want %q", in, err, want)
		}
	}
}

func TestLinkLocal(t *testing.T) {
	mac := tcpip.LinkAddress([]byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02})
	if got := LinkLocal(mac).String(); got != "fe80::5055:aff:fe00:202" {
		t.Errorf("LinkLocal = %s", got)
	}
}
