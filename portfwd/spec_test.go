package portfwd

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	any4 := netip.IPv4Unspecified()
	tests := []struct {
		in   string
		want Spec
		str  string // canonical String()
	}{
		{"8080:80", Spec{ProtoTCP, any4, 8080, netip.Addr{}, 80}, "0.0.0.0:8080:80/tcp"},
		{"8080:80/tcp", Spec{ProtoTCP, any4, 8080, netip.Addr{}, 80}, "0.0.0.0:8080:80/tcp"},
		{"5353:53/udp", Spec{ProtoUDP, any4, 5353, netip.Addr{}, 53}, "0.0.0.0:5353:53/udp"},
		{"1:65535", Spec{ProtoTCP, any4, 1, netip.Addr{}, 65535}, "0.0.0.0:1:65535/tcp"},
		{"127.0.0.1:8080:80", Spec{ProtoTCP, netip.MustParseAddr("127.0.0.1"), 8080, netip.Addr{}, 80}, "127.0.0.1:8080:80/tcp"},
		{"192.168.1.2:443:8443/udp", Spec{ProtoUDP, netip.MustParseAddr("192.168.1.2"), 443, netip.Addr{}, 8443}, "192.168.1.2:443:8443/udp"},
		{":8080:80", Spec{ProtoTCP, any4, 8080, netip.Addr{}, 80}, "0.0.0.0:8080:80/tcp"},
		{"0.0.0.0:8080:80/tcp", Spec{ProtoTCP, any4, 8080, netip.Addr{}, 80}, "0.0.0.0:8080:80/tcp"},
		{"[::1]:8080:80", Spec{ProtoTCP, netip.IPv6Loopback(), 8080, netip.Addr{}, 80}, "[::1]:8080:80/tcp"},
		{"[::]:8080:80/udp", Spec{ProtoUDP, netip.IPv6Unspecified(), 8080, netip.Addr{}, 80}, "[::]:8080:80/udp"},
		{"[2001:db8::1]:1:2", Spec{ProtoTCP, netip.MustParseAddr("2001:db8::1"), 1, netip.Addr{}, 2}, "[2001:db8::1]:1:2/tcp"},
		{"[fe80::1%eth0]:8080:80", Spec{ProtoTCP, netip.MustParseAddr("fe80::1%eth0"), 8080, netip.Addr{}, 80}, "[fe80::1%eth0]:8080:80/tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePublish(tt.in)
			if err != nil {
				t.Fatalf("ParsePublish(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParsePublish(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if s := got.String(); s != tt.str {
				t.Fatalf("String() = %q, want %q", s, tt.str)
			}
			again, err := ParsePublish(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip of %q: %#v, %v", got.String(), again, err)
			}
		})
	}
}

func TestParsePublishErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // exact error text
	}{
		{"80", `invalid publish "80": want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`},
		{"", `invalid publish "": want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`},
		{"80/tcp", `invalid publish "80/tcp": want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`},
		{"8080:80/sctp", `invalid publish "8080:80/sctp": unsupported protocol "sctp", want tcp or udp`},
		{"8080:80/TCP", `invalid publish "8080:80/TCP": unsupported protocol "TCP", want tcp or udp`},
		{"8080:80/", `invalid publish "8080:80/": unsupported protocol "", want tcp or udp`},
		{"8080:80/tcp/udp", `invalid publish "8080:80/tcp/udp": bad guest port "80/tcp": not a number`},
		{"0:80", `invalid publish "0:80": bad host port "0": out of range 1..65535`},
		{"8080:0", `invalid publish "8080:0": bad guest port "0": out of range 1..65535`},
		{"65536:80", `invalid publish "65536:80": bad host port "65536": out of range 1..65535`},
		{"8080:99999999999999999999999", `invalid publish "8080:99999999999999999999999": bad guest port`},
		{"-1:80", `invalid publish "-1:80": bad host port "-1": not a number 1..65535`},
		{"+80:80", `invalid publish "+80:80": bad host port "+80": not a number`},
		{" 80:80", `invalid publish " 80:80": bad host port " 80": not a number`},
		{"8080-8081:80", `invalid publish "8080-8081:80": bad host port "8080-8081": not a number`},
		{"http:80", `invalid publish "http:80": bad host port "http"`},
		{":80", `invalid publish ":80": bad host port "": empty`},
		{"80:", `invalid publish "80:": bad guest port "": empty`},
		{"1.2.3.4::80", `invalid publish "1.2.3.4::80": bad host port "": empty`},
		{"1.2.3.4:80", `invalid publish "1.2.3.4:80": bad host port "1.2.3.4"`},
		{"localhost:8080:80", `invalid publish "localhost:8080:80": bad IPv4 host address "localhost"`},
		{"1.2.3:8080:80", `invalid publish "1.2.3:8080:80": bad IPv4 host address "1.2.3"`},
		{"::1:8080:80", `invalid publish "::1:8080:80": IPv6 host addresses must be in brackets`},
		{"::ffff:1.2.3.4:8080:80", `IPv6 host addresses must be in brackets`},
		{"[::1:8080:80", `invalid publish "[::1:8080:80": missing ']' after IPv6 host address`},
		{"[::1]8080:80", `invalid publish "[::1]8080:80": want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`},
		{"[::1]:8080", `invalid publish "[::1]:8080": want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`},
		{"[::1]:1.2.3.4:8080:80", `invalid publish "[::1]:1.2.3.4:8080:80": want`},
		{"[1.2.3.4]:8080:80", `invalid publish "[1.2.3.4]:8080:80": bad IPv6 host address "1.2.3.4"`},
		{"[]:8080:80", `invalid publish "[]:8080:80": bad IPv6 host address ""`},
		{"[zz]:8080:80", `bad IPv6 host address "zz"`},
		{"1.2.3.4:5:6:7", `IPv6 host addresses must be in brackets`},
		{"\x00:\xff", `invalid publish "\x00:\xff": bad host port "\x00"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePublish(tt.in)
			if err == nil {
				t.Fatalf("ParsePublish(%q) = %#v, want error", tt.in, got)
			}
			if got != (Spec{}) {
				t.Errorf("ParsePublish(%q) returned non-zero spec %#v with error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParsePublish(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestSpecString(t *testing.T) {
	tests := []struct {
		spec Spec
		want string
	}{
		{Spec{}, "0.0.0.0:0:0/tcp"},
		{Spec{Proto: ProtoUDP, HostAddr: netip.MustParseAddr("10.1.2.3"), HostPort: 53, GuestPort: 5353}, "10.1.2.3:53:5353/udp"},
		{Spec{Proto: ProtoTCP, HostAddr: netip.IPv4Unspecified(), HostPort: 8080, GuestAddr: netip.MustParseAddr("10.0.2.100"), GuestPort: 80}, "0.0.0.0:8080:10.0.2.100:80/tcp"},
		{Spec{Proto: ProtoTCP, HostAddr: netip.IPv6Unspecified(), HostPort: 8080, GuestAddr: netip.MustParseAddr("fd00::100"), GuestPort: 80}, "[::]:8080:[fd00::100]:80/tcp"},
	}
	for _, tt := range tests {
		if got := tt.spec.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.spec, got, tt.want)
		}
	}
}

func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"8080:80", "[::1]:8080:80/udp", "1.2.3.4:1:2/tcp", "[", "]:", "/", ":::", "[::1]", "[%]:1:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParsePublish(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid publish ") {
				t.Fatalf("error %q lacks prefix", err)
			}
			return
		}
		if spec.HostPort == 0 || spec.GuestPort == 0 || (spec.Proto != ProtoTCP && spec.Proto != ProtoUDP) || !spec.HostAddr.IsValid() {
			t.Fatalf("ParsePublish(%q) = %#v: invalid spec accepted", s, spec)
		}
		again, err := ParsePublish(spec.String())
		if err != nil || again != spec {
			t.Fatalf("round trip %q -> %q: %#v, %v", s, spec.String(), again, err)
		}
	})
}
