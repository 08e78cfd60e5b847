package forwarder

import (
	"fmt"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", "[127.0.0.53:53]"},
		{"# comment\nnameserver 198.51.100.1 # trailing\n; other\nnameserver 2001:db8::53\n", "[198.51.100.1:53 [2001:db8::53]:53]"},
		{"nameserver fe80::1%eth0\n", "[[fe80::1%eth0]:53]"},
		{"nameserver\nnameserver not-an-ip\nnameservers 1.2.3.4\n", "[]"},
		{"  nameserver\t192.0.2.1  \n", "[192.0.2.1:53]"},
		{"", "[]"},
	} {
		if got := fmt.Sprint(ParseResolvConf([]byte(tc.in))); got != tc.want {
			t.Errorf("ParseResolvConf(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
