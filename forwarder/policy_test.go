package forwarder

import (
	"net/netip"
	"testing"
)

func TestPolicyTranslate(t *testing.T) {
	base := Policy{
		Gateway:  netip.MustParseAddr("10.0.2.2"),
		DNS:      netip.MustParseAddr("10.0.2.3"),
		Network:  netip.MustParsePrefix("10.0.2.0/24"),
		Gateway6: netip.MustParseAddr("fd00::2"),
		DNS6:     netip.MustParseAddr("fd00::3"),
	}
	noLoop := base
	noLoop.DisableHostLoopback = true
	noDNS := base
	noDNS.DisableDNS = true
	for _, tc := range []struct {
		name    string
		p       Policy
		dst     string
		verdict Verdict
		to      string
	}{
		{"gateway to host loopback", base, "10.0.2.2:8080", Dial, "127.0.0.1:8080"},
		{"gateway refused without host loopback", noLoop, "10.0.2.2:8080", Refuse, ""},
		{"dns port 53", base, "10.0.2.3:53", DNS, "10.0.2.3:53"},
		{"dns port 53 with dns disabled", noDNS, "10.0.2.3:53", Refuse, ""},
		{"dns other port is no back door", base, "10.0.2.3:8080", Refuse, ""},
		{"outside address", base, "198.51.100.1:80", Dial, "198.51.100.1:80"},
		{"v4-mapped outside address", base, "[::ffff:198.51.100.1]:80", Dial, "198.51.100.1:80"},
		{"loopback", base, "127.0.0.1:80", Refuse, ""},
		{"network broadcast", base, "10.0.2.255:80", Refuse, ""},
		{"limited broadcast", base, "255.255.255.255:67", Refuse, ""},
		{"multicast", base, "224.0.0.251:5353", Refuse, ""},
		{"port zero", base, "198.51.100.1:0", Refuse, ""},
		{"ipv6 gateway to host ::1", base, "[fd00::2]:8080", Dial, "[::1]:8080"},
		{"ipv6 gateway refused without host loopback", noLoop, "[fd00::2]:8080", Refuse, ""},
		{"ipv6 dns port 53", base, "[fd00::3]:53", DNS, "[fd00::3]:53"},
		{"ipv6 dns other port", base, "[fd00::3]:22", Refuse, ""},
		{"ipv6 outside", base, "[2001:db8::1]:80", Dial, "[2001:db8::1]:80"},
		{"ipv6 loopback", base, "[::1]:80", Refuse, ""},
		{"ipv6 link-local", base, "[fe80::1]:80", Refuse, ""},
		{"ipv6 multicast", base, "[ff02::fb]:5353", Refuse, ""},
	} {
		v, to := tc.p.Translate(netip.MustParseAddrPort(tc.dst))
		if v != tc.verdict {
			t.Errorf("%s: verdict %d, want %d", tc.name, v, tc.verdict)
			continue
		}
		if tc.to != "" && to.String() != tc.to {
			t.Errorf("%s: to %s, want %s", tc.name, to, tc.to)
		}
	}
}
