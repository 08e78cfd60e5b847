package stack

import (
	"strings"
	"testing"
)

func TestParseCIDR(t *testing.T) {
	for _, tc := range []struct {
		in                  string
		gateway, dns, guest string
		wantErr             string
	}{
		{in: "10.0.2.0/24", gateway: "10.0.2.2", dns: "10.0.2.3", guest: "10.0.2.100"},
		{in: "192.168.5.0/25", gateway: "192.168.5.2", dns: "192.168.5.3", guest: "192.168.5.100"},
		{in: "10.0.0.0/8", gateway: "10.0.0.2", dns: "10.0.0.3", guest: "10.0.0.100"},
		{in: "10.0.2.128/25", gateway: "10.0.2.130", dns: "10.0.2.131", guest: "10.0.2.228"},
		{in: "10.0.2.0/26", wantErr: "prefix length must be 1 to 25"},
		{in: "10.0.2.1/24", wantErr: "did you mean 10.0.2.0/24"},
		{in: "fd00::/64", wantErr: "must be an IPv4 network"},
		{in: "10.0.2.0", wantErr: "want an IPv4 network"},
		{in: "", wantErr: "want an IPv4 network"},
		{in: "0.0.0.0/0", wantErr: "prefix length must be 1 to 25"},
	} {
		a, err := ParseCIDR(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseCIDR(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCIDR(%q): %v", tc.in, err)
			continue
		}
		if a.Gateway.String() != tc.gateway || a.DNS.String() != tc.dns || a.Guest.String() != tc.guest {
			t.Errorf("ParseCIDR(%q) = gw %s dns %s guest %s, want %s %s %s", tc.in, a.Gateway, a.DNS, a.Guest, tc.gateway, tc.dns, tc.guest)
		}
	}
}

func TestValidateMTU(t *testing.T) {
	for mtu, ok := range map[int]bool{67: false, 68: true, 1500: true, 65520: true, 65521: true, 65522: false, 0: false, -1: false} {
		if err := ValidateMTU(mtu); (err == nil) != ok {
			t.Errorf("ValidateMTU(%d) = %v, want ok=%v", mtu, err, ok)
		}
	}
}
