package main

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{nil, ""},
		{[]string{"--mtu", "1500", "--cidr", "192.168.7.0/24", "-p", "8080:80", "-p", "127.0.0.1:5353:53/udp"}, ""},
		{[]string{"--mtu", "67"}, "invalid --mtu 67"},
		{[]string{"--mtu", "65522"}, "invalid --mtu 65522"},
		{[]string{"--mtu", "big"}, "invalid argument"},
		{[]string{"--cidr", "10.0.2.0/26"}, "prefix length"},
		{[]string{"--macaddress", "zz"}, "invalid --macaddress"},
		{[]string{"--macaddress", "01:00:00:00:00:01"}, "multicast"},
		{[]string{"-p", "80"}, ""},
		{[]string{"-p", "8000-8010:8000-8010", "-p", "127.0.0.1:9000-9009:80-89/udp", "-p", "auto", "-p", "[::1]:auto/tcp"}, ""},
		{[]string{"-p", "8000-8010:80"}, "ranges of unequal length"},
		{[]string{"-p", "8080:80", "-p", "127.0.0.1:8080:81"}, "-p 8080:80 and -p 127.0.0.1:8080:81 both publish host port 8080/tcp"},
		{[]string{"-p", "8000-8010", "-p", "8005:80"}, "-p 8000-8010 and -p 8005:80 both publish host port 8005/tcp"},
		{[]string{"-p", "auto/tcp", "-p", "auto"}, "both publish automatic ports"},
		{[]string{"-p", "70000:80"}, "70000"},
		{[]string{"--tap", "a-very-long-tap-name"}, "invalid --tap"},
		{[]string{"--unknown"}, "unknown flag"},
		{[]string{"-6", "--cidr6", "fd00:1::/64", "--outbound-addr6", "::1", "--outbound-addr", "127.0.0.1"}, ""},
		{[]string{"-6", "--cidr6", "fd00::/48"}, "/64"},
		{[]string{"-6", "--cidr6", "fd00::1/64"}, "host bits"},
		{[]string{"--cidr6", "10.0.2.0/24"}, "invalid --cidr6"},
		{[]string{"--outbound-addr6", "10.0.0.1"}, "want an IPv6 address"},
		{[]string{"--outbound-addr", "::1"}, "want an IPv4 address"},
		{[]string{"--outbound-addr6", "nosuchif0"}, "neither an address nor an interface"},
		{[]string{"--port-bypass", "-p", "8080:80", "-p", "5353:53/udp"}, ""},
		{[]string{"--port-bypass=false"}, ""},
		{[]string{"--port-bypass=sometimes"}, "invalid argument"},
		{[]string{"--busy-poll", "0"}, ""},
		{[]string{"--busy-poll", "200us"}, ""},
		{[]string{"--busy-poll", "1ms"}, ""},
		{[]string{"--busy-poll", "2ms"}, "invalid --busy-poll 2ms"},
		{[]string{"--busy-poll", "-1us"}, "invalid --busy-poll"},
		{[]string{"--busy-poll", "50"}, "invalid argument"},
		{[]string{"--queues", "2"}, ""},
		{[]string{"--queues", "16"}, ""},
		{[]string{"--queues", "0"}, "invalid --queues 0: want 1 to 16"},
		{[]string{"--queues", "17"}, "invalid --queues 17"},
		{[]string{"--queues", "-1"}, "invalid --queues -1"},
		{[]string{"--queues", "two"}, "want a number of queues or auto"},
		{[]string{"--queues", "auto"}, ""},
		{[]string{"--queues", "Auto"}, "want a number of queues or auto"},
	} {
		var o options
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		o.register(fs)
		err := parse(fs, tc.args)
		if err == nil {
			err = o.validate()
		}
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.args, err)
			}
			continue
		}
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ue) {
			t.Errorf("%v: error %v, want a usage error containing %q", tc.args, err, tc.wantErr)
		}
	}
}

// TestValidateTwice: the slirp4netns form validates again once TAPNAME is
// known; a port must not be published twice (the second bind failed).
func TestValidateTwice(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o.register(fs)
	if err := parse(fs, []string{"--port-bypass", "-p", "8080:80", "-p", "5353:53/udp"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := o.validate(); err != nil {
			t.Fatal(err)
		}
	}
	if len(o.ports) != 2 || !o.portBypass {
		t.Errorf("ports %v, bypass %v; want 2 ports and bypass on", o.ports, o.portBypass)
	}
}

// TestFDList: the TAP's fds pass to the sandboxed process as a list.
func TestFDList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"3", []int{3}},
		{"7,8,9", []int{7, 8, 9}},
		{"", nil},
		{"2", nil},
		{"3,3", nil},
		{"3,x", nil},
		{"3,", nil},
		{"3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19", nil}, // 17: above tap.MaxQueues
	} {
		got, err := parseFDList(tc.in)
		if tc.want == nil {
			if err == nil {
				t.Errorf("parseFDList(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parseFDList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if s := formatFDList(got); s != tc.in {
			t.Errorf("formatFDList(%v) = %q, want %q", got, s, tc.in)
		}
	}
}
