package portfwd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	guest4 = netip.MustParseAddr("10.0.2.100")
	guest6 = netip.MustParseAddr("fd00::100")
	any4   = netip.IPv4Unspecified()
	any6   = netip.IPv6Unspecified()
	lo4    = netip.MustParseAddr("127.0.0.1")
)

func mustPublish(t *testing.T, s string) Publish {
	t.Helper()
	p, err := ParsePublish(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAutoSpecs(t *testing.T) {
	dual := Addresses{Guest: guest4, Guest6: guest6}
	only4 := Addresses{Guest: guest4}
	tcp := func(a netip.Addr, port uint16, v6only bool) Socket {
		return Socket{Proto: ProtoTCP, Addr: a, Port: port, V6Only: v6only}
	}
	tests := []struct {
		name  string
		socks []Socket
		pubs  []string
		addr  Addresses
		want  []string // Spec.String()s, sorted
	}{
		{"v4 any", []Socket{tcp(any4, 80, false)}, []string{"auto"}, dual, []string{"0.0.0.0:80:10.0.2.100:80/tcp"}},
		{"v4 guest address", []Socket{tcp(guest4, 80, false)}, []string{"127.0.0.1:auto"}, dual, []string{"127.0.0.1:80:10.0.2.100:80/tcp"}},
		{"loopback only", []Socket{tcp(lo4, 80, false), tcp(netip.IPv6Loopback(), 81, true), tcp(netip.MustParseAddr("127.1.2.3"), 82, false), tcp(netip.MustParseAddr("::ffff:127.0.0.1"), 83, false)}, []string{"auto"}, dual, nil},
		{"another address", []Socket{tcp(netip.MustParseAddr("192.168.5.1"), 80, false), tcp(netip.MustParseAddr("fd00::5"), 81, true)}, []string{"auto"}, dual, nil},
		{"dual-stack socket", []Socket{tcp(any6, 80, false)}, []string{"auto", "[::]:auto"}, dual, []string{"0.0.0.0:80:10.0.2.100:80/tcp", "[::]:80:[fd00::100]:80/tcp"}},
		{"dual-stack socket, no IPv6", []Socket{tcp(any6, 80, false)}, []string{"[::1]:auto"}, only4, []string{"[::1]:80:10.0.2.100:80/tcp"}},
		{"v6-only socket", []Socket{tcp(any6, 80, true)}, []string{"auto"}, dual, []string{"0.0.0.0:80:[fd00::100]:80/tcp"}},
		{"v6-only socket, no IPv6", []Socket{tcp(any6, 80, true)}, []string{"auto"}, only4, nil},
		{"v6 guest address", []Socket{tcp(guest6, 80, true)}, []string{"[::]:auto"}, dual, []string{"[::]:80:[fd00::100]:80/tcp"}},
		{"v4 socket, v6 host", []Socket{tcp(any4, 80, false)}, []string{"[::]:auto"}, dual, []string{"[::]:80:10.0.2.100:80/tcp"}},
		{"protocols", []Socket{tcp(any4, 53, false), {Proto: ProtoUDP, Addr: any4, Port: 53}, {Proto: ProtoUDP, Addr: any6, Port: 5353}},
			[]string{"auto/udp"}, dual, []string{"0.0.0.0:53:10.0.2.100:53/udp", "0.0.0.0:5353:10.0.2.100:5353/udp"}},
		{"both protocols", []Socket{tcp(any4, 53, false), {Proto: ProtoUDP, Addr: any4, Port: 53}},
			[]string{"auto"}, dual, []string{"0.0.0.0:53:10.0.2.100:53/tcp", "0.0.0.0:53:10.0.2.100:53/udp"}},
		{"two sockets one port", []Socket{tcp(guest4, 80, false), tcp(any6, 80, true)}, []string{"auto", "[::]:auto"}, dual,
			[]string{"0.0.0.0:80:10.0.2.100:80/tcp", "[::]:80:[fd00::100]:80/tcp"}},
		{"explicit only", []Socket{tcp(any4, 80, false)}, []string{"8080:80"}, dual, nil},
		{"port 0", []Socket{tcp(any4, 0, false)}, []string{"auto"}, dual, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pubs []Publish
			for _, s := range tt.pubs {
				pubs = append(pubs, mustPublish(t, s))
			}
			var got []string
			for _, s := range sortedSpecs(AutoSpecs(tt.socks, pubs, tt.addr)) {
				got = append(got, s.String())
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("AutoSpecs = %v, want %v", got, tt.want)
			}
		})
	}
}

// fakeLister is the guest's sockets as the test sets them.
type fakeLister struct {
	mu    sync.Mutex
	socks []Socket
	err   error
}

func (f *fakeLister) set(err error, socks ...Socket) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.socks, f.err = socks, err
}

func (f *fakeLister) Sockets() ([]Socket, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Socket(nil), f.socks...), f.err
}

// logCount counts the log records whose message contains a string.
type logCount struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCount) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCount) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Level.String()+" "+r.Message)
	return nil
}
func (l *logCount) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCount) WithGroup(string) slog.Handler      { return l }
func (l *logCount) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

// autoEntries is the engine's automatic forwards, as Spec strings.
func autoEntries(e *Engine) map[string]int {
	out := map[string]int{}
	for _, en := range e.List() {
		if en.Source == SourceAuto {
			out[en.Spec.String()] = en.ID
		}
	}
	return out
}

// bound reports whether 127.0.0.1:port is taken for TCP.
func bound(t *testing.T, port uint16) bool {
	t.Helper()
	l, err := net.Listen("tcp4", netip.AddrPortFrom(lo4, port).String())
	if err == nil {
		l.Close()
		return false
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatal(err)
	}
	return true
}

// TestAutoPublishes drives an Auto poll by poll over a real engine bound
// on loopback (no stack: nothing connects through it).
func TestAutoPublishes(t *testing.T) {
	logs := &logCount{}
	log := slog.New(logs)
	e := NewEngine(nil, 0, Addresses{Guest: guest4}, log)
	defer e.Close()
	lister := &fakeLister{}
	a, _ := newAuto(e, lister, []Publish{mustPublish(t, "127.0.0.1:auto/tcp")}, log)
	close(a.done) // no loop: the test polls
	defer a.Close()

	p1, p2, p3 := freePort(t), freePort(t), freePort(t)
	sock := func(p uint16) Socket { return Socket{Proto: ProtoTCP, Addr: any4, Port: p} }
	spec := func(p uint16) string {
		return Spec{Proto: ProtoTCP, HostAddr: lo4, HostPort: p, GuestAddr: guest4, GuestPort: p}.String()
	}

	// A socket: published, on the same port.
	lister.set(nil, sock(p1), Socket{Proto: ProtoUDP, Addr: any4, Port: p2})
	a.poll()
	if got := autoEntries(e); len(got) != 1 || got[spec(p1)] == 0 || !bound(t, p1) {
		t.Fatalf("after a listen: %v, want %s", got, spec(p1))
	}
	a.poll()
	if got := autoEntries(e); len(got) != 1 {
		t.Fatalf("a second poll changed the forwards: %v", got)
	}

	// A host port in use: skipped, one warning however many polls, and
	// published once it is free.
	busy, err := net.Listen("tcp4", netip.AddrPortFrom(lo4, p2).String())
	if err != nil {
		t.Fatal(err)
	}
	lister.set(nil, sock(p1), sock(p2))
	for range 3 {
		a.poll()
	}
	if got := autoEntries(e); len(got) != 1 {
		t.Fatalf("with the host port in use: %v, want only %s", got, spec(p1))
	}
	if n := logs.count("automatic port not published"); n != 1 {
		t.Errorf("%d warnings for the busy port, want 1: %v", n, logs.msgs)
	}
	busy.Close()
	a.poll()
	if got := autoEntries(e); got[spec(p2)] == 0 {
		t.Fatalf("the host port freed: %v, want %s published", got, spec(p2))
	}

	// An explicit forward of the same host port wins, and one of the
	// same guest port keeps it from being published again.
	if _, err := e.AddFrom(Spec{Proto: ProtoTCP, HostAddr: lo4, HostPort: p2, GuestPort: 9}, SourceAPI); err != nil {
		t.Fatalf("an explicit forward over an automatic one: %v", err)
	}
	if _, err := e.AddFrom(Spec{Proto: ProtoTCP, HostAddr: lo4, HostPort: p3, GuestPort: p1}, SourceFlag); err != nil {
		t.Fatal(err)
	}
	a.poll()
	if got := autoEntries(e); len(got) != 0 {
		t.Errorf("with explicit forwards of the host and the guest port: %v, want none automatic", got)
	}
	if n := logs.count("automatic port not published"); n != 1 {
		t.Errorf("explicit forwards made %d warnings: %v", n-1, logs.msgs)
	}
	for _, en := range e.List() {
		if en.Source != SourceAuto {
			e.Remove(en.ID)
		}
	}

	// A listing that fails keeps what is published, with one warning.
	a.poll()
	lister.set(errors.New("no"), nil...)
	a.poll()
	a.poll()
	if got := autoEntries(e); len(got) != 2 {
		t.Errorf("with the listing failing: %v, want the two forwards kept", got)
	}
	if n := logs.count("cannot list"); n != 1 {
		t.Errorf("%d warnings for the listing, want 1", n)
	}

	// The socket closes: withdrawn, the host port free again.
	lister.set(nil, sock(p2))
	a.poll()
	if got := autoEntries(e); len(got) != 1 || got[spec(p2)] == 0 || bound(t, p1) {
		t.Fatalf("after a close: %v (port %d bound: %v), want only %s", got, p1, bound(t, p1), spec(p2))
	}
	a.Close()
	if got := autoEntries(e); len(got) != 0 || bound(t, p2) {
		t.Errorf("after Close: %v, want none", got)
	}
}

// TestAutoLoop: StartAuto polls on its own and Close ends it.
func TestAutoLoop(t *testing.T) {
	e := NewEngine(nil, 0, Addresses{Guest: guest4}, slog.New(slog.DiscardHandler))
	defer e.Close()
	p := freePort(t)
	lister := &fakeLister{}
	lister.set(nil, Socket{Proto: ProtoTCP, Addr: any4, Port: p})
	a := StartAuto(e, lister, []Publish{mustPublish(t, "127.0.0.1:auto")}, AutoInterval/10, nil)
	defer a.Close()
	for range 500 {
		if len(autoEntries(e)) == 1 {
			a.Close()
			if len(autoEntries(e)) != 0 {
				t.Fatal("Close left automatic forwards")
			}
			return
		}
		waitABit()
	}
	t.Fatal("the loop never published the port")
}

func waitABit() { <-time.After(10 * time.Millisecond) }
