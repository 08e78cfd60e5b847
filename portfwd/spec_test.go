package portfwd

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	any4 := netip.IPv4Unspecified()
	lo4 := netip.MustParseAddr("127.0.0.1")
	one := func(proto Proto, host netip.Addr, hp, gp uint16) Publish {
		return Publish{Proto: proto, HostAddr: host, HostPort: hp, GuestPort: gp, Count: 1}
	}
	tests := []struct {
		in   string
		want Publish
		str  string // canonical String()
	}{
		{"8080:80", one(ProtoTCP, any4, 8080, 80), "0.0.0.0:8080:80/tcp"},
		{"8080:80/tcp", one(ProtoTCP, any4, 8080, 80), "0.0.0.0:8080:80/tcp"},
		{"5353:53/udp", one(ProtoUDP, any4, 5353, 53), "0.0.0.0:5353:53/udp"},
		{"1:65535", one(ProtoTCP, any4, 1, 65535), "0.0.0.0:1:65535/tcp"},
		{"127.0.0.1:8080:80", one(ProtoTCP, lo4, 8080, 80), "127.0.0.1:8080:80/tcp"},
		{"192.168.1.2:443:8443/udp", one(ProtoUDP, netip.MustParseAddr("192.168.1.2"), 443, 8443), "192.168.1.2:443:8443/udp"},
		{":8080:80", one(ProtoTCP, any4, 8080, 80), "0.0.0.0:8080:80/tcp"},
		{"0.0.0.0:8080:80/tcp", one(ProtoTCP, any4, 8080, 80), "0.0.0.0:8080:80/tcp"},
		{"[::1]:8080:80", one(ProtoTCP, netip.IPv6Loopback(), 8080, 80), "[::1]:8080:80/tcp"},
		{"[::]:8080:80/udp", one(ProtoUDP, netip.IPv6Unspecified(), 8080, 80), "[::]:8080:80/udp"},
		{"[2001:db8::1]:1:2", one(ProtoTCP, netip.MustParseAddr("2001:db8::1"), 1, 2), "[2001:db8::1]:1:2/tcp"},
		{"[fe80::1%eth0]:8080:80", one(ProtoTCP, netip.MustParseAddr("fe80::1%eth0"), 8080, 80), "[fe80::1%eth0]:8080:80/tcp"},
		// The same port on both sides.
		{"8080", one(ProtoTCP, any4, 8080, 8080), "0.0.0.0:8080:8080/tcp"},
		{"53/udp", one(ProtoUDP, any4, 53, 53), "0.0.0.0:53:53/udp"},
		{"127.0.0.1:8080", one(ProtoTCP, lo4, 8080, 8080), "127.0.0.1:8080:8080/tcp"},
		{"[::1]:8080/udp", one(ProtoUDP, netip.IPv6Loopback(), 8080, 8080), "[::1]:8080:8080/udp"},
		// Ranges.
		{"8000-8010:8000-8010", Publish{ProtoTCP, any4, false, 8000, 8000, 11}, "0.0.0.0:8000-8010:8000-8010/tcp"},
		{"127.0.0.1:9000-9009:80-89/udp", Publish{ProtoUDP, lo4, false, 9000, 80, 10}, "127.0.0.1:9000-9009:80-89/udp"},
		{"8000-8010", Publish{ProtoTCP, any4, false, 8000, 8000, 11}, "0.0.0.0:8000-8010:8000-8010/tcp"},
		{"[::]:1-65535", Publish{ProtoTCP, netip.IPv6Unspecified(), false, 1, 1, 65535}, "[::]:1-65535:1-65535/tcp"},
		{"7-7:9-9", one(ProtoTCP, any4, 7, 9), "0.0.0.0:7:9/tcp"},
		{"127.0.0.1:100-101/tcp", Publish{ProtoTCP, lo4, false, 100, 100, 2}, "127.0.0.1:100-101:100-101/tcp"},
		// Automatic forwarding.
		{"auto", Publish{HostAddr: any4, Auto: true}, "0.0.0.0:auto"},
		{"auto/tcp", Publish{Proto: ProtoTCP, HostAddr: any4, Auto: true}, "0.0.0.0:auto/tcp"},
		{"auto/udp", Publish{Proto: ProtoUDP, HostAddr: any4, Auto: true}, "0.0.0.0:auto/udp"},
		{"127.0.0.1:auto", Publish{HostAddr: lo4, Auto: true}, "127.0.0.1:auto"},
		{"[::1]:auto/tcp", Publish{Proto: ProtoTCP, HostAddr: netip.IPv6Loopback(), Auto: true}, "[::1]:auto/tcp"},
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

func TestPublishSpecs(t *testing.T) {
	p, err := ParsePublish("127.0.0.1:9000-9002:80-82/udp")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range p.Specs() {
		got = append(got, s.String())
	}
	if want := "127.0.0.1:9000:80/udp 127.0.0.1:9001:81/udp 127.0.0.1:9002:82/udp"; strings.Join(got, " ") != want {
		t.Errorf("Specs() = %v, want %s", got, want)
	}
	p, _ = ParsePublish("[::]:65535")
	if s := p.Specs(); len(s) != 1 || s[0].String() != "[::]:65535:65535/tcp" {
		t.Errorf("Specs() = %v", s)
	}
	p, _ = ParsePublish("auto")
	if s := p.Specs(); len(s) != 0 {
		t.Errorf("auto: Specs() = %v, want none", s)
	}
	if pr := p.Protos(); len(pr) != 2 {
		t.Errorf("auto: Protos() = %v, want tcp and udp", pr)
	}
}

func TestParsePublishErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // a part of the error text
	}{
		{"", `invalid publish "": bad host port "": empty`},
		{"8080:80/sctp", `invalid publish "8080:80/sctp": unsupported protocol "sctp", want tcp or udp`},
		{"8080:80/TCP", `invalid publish "8080:80/TCP": unsupported protocol "TCP", want tcp or udp`},
		{"8080:80/", `invalid publish "8080:80/": unsupported protocol "", want tcp or udp`},
		{"8080:80/tcp/udp", `invalid publish "8080:80/tcp/udp": bad guest port "80/tcp": not a number`},
		{"0:80", `invalid publish "0:80": bad host port "0": out of range 1..65535`},
		{"8080:0", `invalid publish "8080:0": bad guest port "0": out of range 1..65535`},
		{"0", `bad host port "0": out of range`},
		{"65536:80", `invalid publish "65536:80": bad host port "65536": out of range 1..65535`},
		{"8080:99999999999999999999999", `invalid publish "8080:99999999999999999999999": bad guest port`},
		{"-1:80", `invalid publish "-1:80": bad host port "-1": not a number 1..65535`},
		{"+80:80", `invalid publish "+80:80": bad host port "+80": not a number`},
		{" 80:80", `invalid publish " 80:80": bad host port " 80": not a number`},
		{"http:80", `invalid publish "http:80": bad host port "http"`},
		{":80", `invalid publish ":80": bad host port "": empty`},
		{"80:", `invalid publish "80:": bad guest port "": empty`},
		{"1.2.3.4::80", `invalid publish "1.2.3.4::80": bad host port "": empty`},
		{"1.2.3.4:", `invalid publish "1.2.3.4:": bad host port "": empty`},
		{"localhost:8080:80", `invalid publish "localhost:8080:80": bad IPv4 host address "localhost"`},
		{"localhost:8080", `bad host port "localhost"`},
		{"1.2.3:8080:80", `invalid publish "1.2.3:8080:80": bad IPv4 host address "1.2.3"`},
		{"1.2.3:8080", `bad IPv4 host address "1.2.3"`},
		{"::1:8080:80", `invalid publish "::1:8080:80": IPv6 host addresses must be in brackets`},
		{"::ffff:1.2.3.4:8080:80", `IPv6 host addresses must be in brackets`},
		{"[::1:8080:80", `invalid publish "[::1:8080:80": missing ']' after IPv6 host address`},
		{"[::1]8080:80", `invalid publish "[::1]8080:80": want [HOST_IP:]HOST_PORT`},
		{"[::1]", `invalid publish "[::1]": want`},
		{"[::1]:1.2.3.4:8080:80", `invalid publish "[::1]:1.2.3.4:8080:80": want`},
		{"[1.2.3.4]:8080:80", `invalid publish "[1.2.3.4]:8080:80": bad IPv6 host address "1.2.3.4"`},
		{"[]:8080:80", `invalid publish "[]:8080:80": bad IPv6 host address ""`},
		{"[zz]:8080:80", `bad IPv6 host address "zz"`},
		{"1.2.3.4:5:6:7", `IPv6 host addresses must be in brackets`},
		{"\x00:\xff", `invalid publish "\x00:\xff": bad host port "\x00"`},
		// Ranges.
		{"8000-8010:80", `invalid publish "8000-8010:80": host ports 8000-8010 (11) and guest ports 80 (1): ranges of unequal length`},
		{"8000-8010:80-89", `host ports 8000-8010 (11) and guest ports 80-89 (10): ranges of unequal length`},
		{"80:8000-8001", `ranges of unequal length`},
		{"8010-8000:8010-8000", `bad host port "8010-8000": range ends before it starts`},
		{"8000-:80", `bad host port "8000-": empty`},
		{"-8000:80", `bad host port "-8000": not a number`},
		{"8000-8010-8020", `bad host port "8000-8010-8020": not a number`},
		{"0-10", `bad host port "0-10": out of range`},
		{"65530-65536", `bad host port "65530-65536": out of range`},
		{"1-2:65535-65536", `bad guest port "65535-65536": out of range`},
		// Automatic forwarding.
		{"auto:80", `bad host port "auto": not a number`},
		{"80:auto", `bad guest port "auto": not a number`},
		{"auto/sctp", `unsupported protocol "sctp"`},
		{"AUTO", `bad host port "AUTO": not a number`},
		{":auto", `bad host port "": empty`},
		{"localhost:auto", `bad host port "localhost"`},
		{"1.2.3.4:auto:80", `bad host port "auto"`},
		{"[::1]:auto:80", `bad host port "auto"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePublish(tt.in)
			if err == nil {
				t.Fatalf("ParsePublish(%q) = %#v, want error", tt.in, got)
			}
			if got != (Publish{}) {
				t.Errorf("ParsePublish(%q) returned non-zero value %#v with error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParsePublish(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("ParsePublish(%q) error %q is not one line", tt.in, err)
			}
		})
	}
}

func TestCheckPublishes(t *testing.T) {
	tests := []struct {
		flags   []string
		wantErr string // "" for none
	}{
		{[]string{"8080:80", "8081:80", "127.0.0.1:8082:80"}, ""},
		{[]string{"8080:80", "8080:80/udp"}, ""},
		{[]string{"8080:80", "[::]:8080:80"}, ""}, // [::] is IPv6 only
		{[]string{"127.0.0.1:8080:80", "127.0.0.2:8080:80"}, ""},
		{[]string{"8000-8009", "8010-8019"}, ""},
		{[]string{"auto", "8080:80"}, ""}, // the explicit one wins
		{[]string{"127.0.0.1:auto", "[::1]:auto"}, ""},
		{[]string{"auto/tcp", "auto/udp"}, ""},
		{[]string{"8080:80", "8080:81"}, "-p 8080:80 and -p 8080:81 both publish host port 8080/tcp"},
		{[]string{"127.0.0.1:8080:80", "8080:81"}, "-p 127.0.0.1:8080:80 and -p 8080:81 both publish host port 8080/tcp"},
		{[]string{"1:1", "8000-8010:9000-9010/udp", "8010-8020/udp"}, "-p 8000-8010:9000-9010/udp and -p 8010-8020/udp both publish host port 8010/udp"},
		{[]string{"9000-9100", "9050"}, "-p 9000-9100 and -p 9050 both publish host port 9050/tcp"},
		{[]string{"[::]:8080:80", "[::1]:8080"}, "-p [::]:8080:80 and -p [::1]:8080 both publish host port 8080/tcp"},
		{[]string{"auto", "auto/udp"}, "-p auto and -p auto/udp both publish automatic ports (udp)"},
		{[]string{"auto", "127.0.0.1:auto"}, "-p auto and -p 127.0.0.1:auto both publish automatic ports (tcp and udp)"},
	}
	for _, tt := range tests {
		var pubs []Publish
		for _, f := range tt.flags {
			p, err := ParsePublish(f)
			if err != nil {
				t.Fatalf("%q: %v", f, err)
			}
			pubs = append(pubs, p)
		}
		err := CheckPublishes(tt.flags, pubs)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%v: %v", tt.flags, err)
		case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
			t.Errorf("%v: error %v, want %q", tt.flags, err, tt.wantErr)
		}
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
	for _, s := range []string{"8080:80", "[::1]:8080:80/udp", "1.2.3.4:1:2/tcp", "[", "]:", "/", ":::", "[::1]", "[%]:1:1",
		"8000-8010:9000-9010", "1.2.3.4:8080", "auto", "[::1]:auto/udp", "1-65535", "65535-1", "--", "1-:1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePublish(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid publish ") {
				t.Fatalf("error %q lacks prefix", err)
			}
			return
		}
		if !p.HostAddr.IsValid() {
			t.Fatalf("ParsePublish(%q) = %#v: no host address", s, p)
		}
		if p.Auto {
			if p.Count != 0 || p.HostPort != 0 || p.GuestPort != 0 || (p.Proto != "" && p.Proto != ProtoTCP && p.Proto != ProtoUDP) {
				t.Fatalf("ParsePublish(%q) = %#v: invalid auto accepted", s, p)
			}
		} else {
			if p.HostPort == 0 || p.GuestPort == 0 || p.Count < 1 || int(p.HostPort)+p.Count-1 > 65535 || int(p.GuestPort)+p.Count-1 > 65535 ||
				(p.Proto != ProtoTCP && p.Proto != ProtoUDP) {
				t.Fatalf("ParsePublish(%q) = %#v: invalid publish accepted", s, p)
			}
			if specs := p.Specs(); len(specs) != p.Count || specs[len(specs)-1].HostPort != p.HostPort+uint16(p.Count-1) {
				t.Fatalf("ParsePublish(%q): %d specs for %d ports", s, len(specs), p.Count)
			}
		}
		again, err := ParsePublish(p.String())
		if err != nil || again != p {
			t.Fatalf("round trip %q -> %q: %#v, %v", s, p.String(), again, err)
		}
		if err := CheckPublishes([]string{s, s}, []Publish{p, p}); err == nil {
			t.Fatalf("%q twice is not a conflict", s)
		}
	})
}
