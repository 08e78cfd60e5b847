package main

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rootlessnet/rootlessnet/portfwd"
)

// TestPortsList asks a real API socket over a real engine (no stack:
// nothing connects through it) and prints its forwards with their
// sources.
func TestPortsList(t *testing.T) {
	e := portfwd.NewEngine(nil, 0, portfwd.Addresses{Guest: netip.MustParseAddr("10.0.2.100")}, slog.New(slog.DiscardHandler))
	defer e.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	var ports []uint16
	for range 2 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, uint16(l.Addr().(*net.TCPAddr).Port))
		l.Close()
	}
	if _, err := e.AddFrom(portfwd.Spec{Proto: portfwd.ProtoTCP, HostAddr: lo, HostPort: ports[0], GuestPort: 80}, portfwd.SourceFlag); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Add(portfwd.Spec{Proto: portfwd.ProtoUDP, HostAddr: lo, HostPort: ports[1], GuestPort: 53}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	api, err := portfwd.NewAPIServer(sock, e, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- api.Serve() }()
	defer func() {
		api.Close()
		<-served
	}()

	entries, err := listHostfwd(sock)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printPorts(&out, entries, false); err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		rows = append(rows, strings.Join(strings.Fields(line), " "))
	}
	want := []string{
		"ID PROTO HOST GUEST SOURCE",
		"1 tcp 127.0.0.1:" + itoa(ports[0]) + " 10.0.2.100:80 flag",
		"2 udp 127.0.0.1:" + itoa(ports[1]) + " 10.0.2.100:53 api",
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed\n%s\nwant\n%s", out.String(), strings.Join(want, "\n"))
	}
	out.Reset()
	if err := printPorts(&out, entries, true); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), `[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":`) || !strings.Contains(out.String(), `"source":"api"}]`) {
		t.Errorf("--json printed %s", out.String())
	}
}

func TestPortsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no API socket given"},
		{[]string{"-a", filepath.Join(t.TempDir(), "none")}, "is rootlessnet running with --api-socket"},
		{[]string{"-a", "x", "extra"}, `unexpected argument "extra"`},
		{[]string{"--bogus"}, "unknown flag"},
	} {
		err := portsCommand(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want one line with %q", tc.args, err, tc.want)
		}
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
