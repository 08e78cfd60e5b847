package portfwd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeForwards is an in-memory Forwards. Its ids start at 42 (or wherever
// next says), so a server that invented its own ids would be caught.
type fakeForwards struct {
	mu      sync.Mutex
	next    int
	entries []Entry
	added   []Spec        // every spec passed to Add, in order
	addErr  error         // if set, Add fails with it
	block   chan struct{} // if set, Add waits for it to be closed
	entered chan struct{} // if set, Add signals here on entry
}

var defaultGuest = netip.MustParseAddr("10.0.2.100")

func newFake() *fakeForwards { return &fakeForwards{next: 42} }

// preloaded returns a fake holding two forwards, ids 7 and 9.
func preloaded() *fakeForwards {
	f := newFake()
	f.entries = []Entry{
		{ID: 7, Spec: Spec{ProtoTCP, netip.IPv4Unspecified(), 8080, defaultGuest, 80}},
		{ID: 9, Spec: Spec{ProtoUDP, netip.IPv6Loopback(), 5353, netip.MustParseAddr("fd00::100"), 53}},
	}
	return f
}

func (f *fakeForwards) Add(spec Spec) (int, error) {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added = append(f.added, spec)
	if f.addErr != nil {
		return 0, f.addErr
	}
	if !spec.GuestAddr.IsValid() {
		spec.GuestAddr = defaultGuest
	}
	id := f.next
	f.next++
	f.entries = append(f.entries, Entry{ID: id, Spec: spec})
	return id, nil
}

func (f *fakeForwards) Remove(id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, e := range f.entries {
		if e.ID == id {
			f.entries = slices.Delete(f.entries, i, i+1)
			return nil
		}
	}
	return fmt.Errorf("no forward with id %d", id)
}

func (f *fakeForwards) List() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

func (f *fakeForwards) ids() []int {
	var ids []int
	for _, e := range f.List() {
		ids = append(ids, e.ID)
	}
	return ids
}

func (f *fakeForwards) lastAdded(t *testing.T) Spec {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.added) != 1 {
		t.Fatalf("Add called %d times, want 1: %v", len(f.added), f.added)
	}
	return f.added[0]
}

// startServer creates and serves an API server on dir/api.sock (dir defaults
// to a fresh temp dir); the cleanup closes it and checks that Serve returned
// nil.
func startServer(t *testing.T, fw Forwards, timeout time.Duration) (*APIServer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.sock")
	s, err := NewAPIServer(path, fw, nil)
	if err != nil {
		t.Fatalf("NewAPIServer: %v", err)
	}
	if timeout > 0 {
		s.timeout = timeout
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-serveErr:
			if err != nil {
				t.Errorf("Serve returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
	})
	return s, path
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// rootlesskitDo behaves like rootlesskit's client: write, half-close, read
// until EOF. Any read error (e.g. ECONNRESET) is returned.
func rootlesskitDo(path, req string) (string, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return "", fmt.Errorf("CloseWrite: %w", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), fmt.Errorf("ReadAll: %w (got %q)", err, b)
	}
	return string(b), nil
}

// podmanDo behaves like podman's client: write the request (podman appends
// "\n"), no half-close, one read into a 2048-byte buffer.
func podmanDo(path, req string) (string, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	return string(buf[:n]), nil
}

func rootlesskitRequest(t *testing.T, path, req string) string {
	t.Helper()
	r, err := rootlesskitDo(path, req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func podmanRequest(t *testing.T, path, req string) string {
	t.Helper()
	r, err := podmanDo(path, req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type clientStyle struct {
	name      string
	suffix    string // appended to the request
	halfClose bool
	request   func(t *testing.T, path, req string) string
}

var styles = []clientStyle{
	{"rootlesskit", "\n", true, rootlesskitRequest},
	{"rootlesskit-no-newline", "", true, rootlesskitRequest},
	{"podman", "\n", false, podmanRequest},
	{"podman-crlf", "\r\n", false, podmanRequest},
}

const (
	errParseJSON   = `{"error":{"desc":"bad request: cannot parse JSON"}}`
	errNoExecute   = `{"error":{"desc":"bad request: no execute found"}}`
	errUnknown     = `{"error":{"desc":"bad request: unknown execute"}}`
	errTooLargeMsg = `{"error":{"desc":"bad request: too large message"}}`
	errRemoveID    = `{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}`
)

func errAdd(field string) string {
	return `{"error":{"desc":"bad request: add_hostfwd: bad arguments.` + field + `"}}`
}

func addReq(args string) string { return `{"execute":"add_hostfwd","arguments":{` + args + `}}` }

func TestAPIRequests(t *testing.T) {
	const full = `"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80`
	wantSpec := func(want Spec) func(*testing.T, *fakeForwards) {
		return func(t *testing.T, f *fakeForwards) {
			t.Helper()
			if got := f.lastAdded(t); got != want {
				t.Errorf("Add got %#v, want %#v", got, want)
			}
		}
	}
	noAdd := func(t *testing.T, f *fakeForwards) {
		if len(f.added) != 0 {
			t.Errorf("Add was called: %v", f.added)
		}
		if !slices.Equal(f.ids(), []int{7, 9}) {
			t.Errorf("ids = %v, want [7 9]", f.ids())
		}
	}
	any4, v4 := netip.IPv4Unspecified(), netip.MustParseAddr
	tests := []struct {
		name     string
		req      string
		want     string
		needsEOF bool // incomplete without the client's half-close
		addErr   error
		check    func(*testing.T, *fakeForwards)
	}{
		// add_hostfwd
		{name: "add full", req: addReq(full), want: `{"return":{"id":42}}`,
			check: wantSpec(Spec{ProtoTCP, any4, 8080, v4("10.0.2.100"), 80})},
		{name: "add podman", req: `{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "", "host_port": 8080, "guest_addr": "", "guest_port": 80}}`,
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoTCP, any4, 8080, netip.Addr{}, 80})},
		{name: "add minimal udp", req: addReq(`"proto":"udp","host_port":53,"guest_port":5353`),
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoUDP, any4, 53, netip.Addr{}, 5353})},
		{name: "add null addrs", req: addReq(`"proto":"udp","host_addr":null,"host_port":1,"guest_addr":null,"guest_port":65535`),
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoUDP, any4, 1, netip.Addr{}, 65535})},
		{name: "add ipv6", req: addReq(`"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"fd00::100","guest_port":80`),
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoTCP, netip.IPv6Loopback(), 8080, v4("fd00::100"), 80})},
		{name: "add ipv6 unspecified host", req: addReq(`"proto":"tcp","host_addr":"::","host_port":8080,"guest_port":80`),
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoTCP, netip.IPv6Unspecified(), 8080, netip.Addr{}, 80})},
		{name: "add guest 0.0.0.0 is default", req: addReq(`"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"0.0.0.0","guest_port":80`),
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoTCP, v4("127.0.0.1"), 8080, netip.Addr{}, 80})},
		{name: "add v4-mapped unmapped", req: addReq(`"proto":"tcp","host_addr":"::ffff:127.0.0.1","host_port":8080,"guest_addr":"::ffff:10.0.2.5","guest_port":80`),
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoTCP, v4("127.0.0.1"), 8080, v4("10.0.2.5"), 80})},
		{name: "add extra keys ignored", req: `{"execute":"add_hostfwd","id":"x","arguments":{` + full + `,"foo":[1,2]}}`,
			want: `{"return":{"id":42}}`, check: wantSpec(Spec{ProtoTCP, any4, 8080, v4("10.0.2.100"), 80})},
		{name: "add forwards error", req: addReq(full), addErr: errors.New("listen tcp 0.0.0.0:8080: bind: address already in use"),
			want: `{"error":{"desc":"listen tcp 0.0.0.0:8080: bind: address already in use"}}`},
		{name: "add forwards error escaped", req: addReq(full), addErr: errors.New(`bad "<x>" & y`),
			want: `{"error":{"desc":"bad \"<x>\" & y"}}`},

		{name: "add no arguments", req: `{"execute":"add_hostfwd"}`, want: errAdd("proto"), check: noAdd},
		{name: "add arguments array", req: `{"execute":"add_hostfwd","arguments":[1]}`, want: errAdd("proto"), check: noAdd},
		{name: "add proto missing", req: addReq(`"host_port":8080,"guest_port":80`), want: errAdd("proto"), check: noAdd},
		{name: "add proto sctp", req: addReq(`"proto":"sctp","host_port":8080,"guest_port":80`), want: errAdd("proto"), check: noAdd},
		{name: "add proto TCP", req: addReq(`"proto":"TCP","host_port":8080,"guest_port":80`), want: errAdd("proto"), check: noAdd},
		{name: "add proto number", req: addReq(`"proto":6,"host_port":8080,"guest_port":80`), want: errAdd("proto"), check: noAdd},
		{name: "add proto null", req: addReq(`"proto":null,"host_port":8080,"guest_port":80`), want: errAdd("proto"), check: noAdd},
		{name: "add proto checked first", req: addReq(`"proto":"x","host_addr":"x","host_port":0`), want: errAdd("proto"), check: noAdd},
		{name: "add host_addr bad", req: addReq(`"proto":"tcp","host_addr":"1.2.3","host_port":8080,"guest_port":80`), want: errAdd("host_addr"), check: noAdd},
		{name: "add host_addr name", req: addReq(`"proto":"tcp","host_addr":"localhost","host_port":8080,"guest_port":80`), want: errAdd("host_addr"), check: noAdd},
		{name: "add host_addr with port", req: addReq(`"proto":"tcp","host_addr":"1.2.3.4:80","host_port":8080,"guest_port":80`), want: errAdd("host_addr"), check: noAdd},
		{name: "add host_addr number", req: addReq(`"proto":"tcp","host_addr":5,"host_port":8080,"guest_port":80`), want: errAdd("host_addr"), check: noAdd},
		{name: "add host_port missing", req: addReq(`"proto":"tcp","guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port 0", req: addReq(`"proto":"tcp","host_port":0,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port negative", req: addReq(`"proto":"tcp","host_port":-80,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port 65536", req: addReq(`"proto":"tcp","host_port":65536,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port huge", req: addReq(`"proto":"tcp","host_port":184467440737095516160,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port float", req: addReq(`"proto":"tcp","host_port":80.5,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port 80.0", req: addReq(`"proto":"tcp","host_port":80.0,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port exponent", req: addReq(`"proto":"tcp","host_port":8e1,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port string", req: addReq(`"proto":"tcp","host_port":"8080","guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port null", req: addReq(`"proto":"tcp","host_port":null,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add host_port bool", req: addReq(`"proto":"tcp","host_port":true,"guest_port":80`), want: errAdd("host_port"), check: noAdd},
		{name: "add guest_addr bad", req: addReq(`"proto":"tcp","host_port":8080,"guest_addr":"10.0.2","guest_port":80`), want: errAdd("guest_addr"), check: noAdd},
		{name: "add guest_addr zone", req: addReq(`"proto":"tcp","host_port":8080,"guest_addr":"fe80::1%eth0","guest_port":80`), want: errAdd("guest_addr"), check: noAdd},
		{name: "add guest_addr object", req: addReq(`"proto":"tcp","host_port":8080,"guest_addr":{},"guest_port":80`), want: errAdd("guest_addr"), check: noAdd},
		{name: "add guest_port missing", req: addReq(`"proto":"tcp","host_port":8080`), want: errAdd("guest_port"), check: noAdd},
		{name: "add guest_port 0", req: addReq(`"proto":"udp","host_port":8080,"guest_port":0`), want: errAdd("guest_port"), check: noAdd},
		{name: "add guest_port negative", req: addReq(`"proto":"udp","host_port":8080,"guest_port":-1`), want: errAdd("guest_port"), check: noAdd},
		{name: "add guest_port 70000", req: addReq(`"proto":"udp","host_port":8080,"guest_port":70000`), want: errAdd("guest_port"), check: noAdd},
		{name: "add guest_port float", req: addReq(`"proto":"udp","host_port":8080,"guest_port":79.99`), want: errAdd("guest_port"), check: noAdd},
		{name: "add guest_port string", req: addReq(`"proto":"udp","host_port":8080,"guest_port":"80"`), want: errAdd("guest_port"), check: noAdd},

		// list_hostfwd
		{name: "list", req: `{"execute":"list_hostfwd"}`,
			want: `{"return":{"entries":[{"id":7,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":9,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"fd00::100","guest_port":53}]},` +
				`"entries":[{"id":7,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":9,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"fd00::100","guest_port":53}]}`},
		{name: "list with arguments", req: `{"execute": "list_hostfwd", "arguments": {}}`,
			want: `{"return":{"entries":[{"id":7,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":9,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"fd00::100","guest_port":53}]},` +
				`"entries":[{"id":7,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":9,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"fd00::100","guest_port":53}]}`},

		// remove_hostfwd
		{name: "remove", req: `{"execute":"remove_hostfwd","arguments":{"id":7}}`, want: `{"return":{}}`,
			check: func(t *testing.T, f *fakeForwards) {
				if !slices.Equal(f.ids(), []int{9}) {
					t.Errorf("ids after remove = %v, want [9]", f.ids())
				}
			}},
		{name: "remove unknown", req: `{"execute":"remove_hostfwd","arguments":{"id":8}}`, want: errRemoveID, check: noAdd},
		{name: "remove 0", req: `{"execute":"remove_hostfwd","arguments":{"id":0}}`, want: errRemoveID, check: noAdd},
		{name: "remove negative", req: `{"execute":"remove_hostfwd","arguments":{"id":-7}}`, want: errRemoveID, check: noAdd},
		{name: "remove float", req: `{"execute":"remove_hostfwd","arguments":{"id":7.5}}`, want: errRemoveID, check: noAdd},
		{name: "remove string", req: `{"execute":"remove_hostfwd","arguments":{"id":"7"}}`, want: errRemoveID, check: noAdd},
		{name: "remove huge", req: `{"execute":"remove_hostfwd","arguments":{"id":99999999999999999999}}`, want: errRemoveID, check: noAdd},
		{name: "remove no id", req: `{"execute":"remove_hostfwd","arguments":{}}`, want: errRemoveID, check: noAdd},
		{name: "remove no arguments", req: `{"execute":"remove_hostfwd"}`, want: errRemoveID, check: noAdd},

		// generic errors
		{name: "not json", req: `hello`, want: errParseJSON, check: noAdd},
		{name: "array", req: `[{"execute":"list_hostfwd"}]`, want: errParseJSON, check: noAdd},
		{name: "null", req: `null`, want: errParseJSON, check: noAdd},
		{name: "string", req: `"list_hostfwd"`, want: errParseJSON, check: noAdd},
		{name: "bad syntax", req: `{"execute":"list_hostfwd",}`, want: errParseJSON, check: noAdd},
		{name: "two objects", req: `{"execute":"list_hostfwd"}{"execute":"list_hostfwd"}`, want: errParseJSON, check: noAdd},
		{name: "trailing garbage", req: `{"execute":"list_hostfwd"} x`, want: errParseJSON, check: noAdd},
		{name: "truncated", req: `{"execute":"list_hostfwd"`, want: errParseJSON, needsEOF: true, check: noAdd},
		{name: "empty", req: ``, want: errParseJSON, needsEOF: true, check: noAdd},
		{name: "no execute", req: `{}`, want: errNoExecute, check: noAdd},
		{name: "no execute with arguments", req: `{"arguments":{"id":7}}`, want: errNoExecute, check: noAdd},
		{name: "execute number", req: `{"execute":5}`, want: errNoExecute, check: noAdd},
		{name: "execute null", req: `{"execute":null}`, want: errNoExecute, check: noAdd},
		{name: "unknown execute", req: `{"execute":"quit"}`, want: errUnknown, check: noAdd},
		{name: "empty execute", req: `{"execute":""}`, want: errUnknown, check: noAdd},
		{name: "uppercase execute", req: `{"execute":"ADD_HOSTFWD","arguments":{` + full + `}}`, want: errUnknown, check: noAdd},
	}
	for _, style := range styles {
		t.Run(style.name, func(t *testing.T) {
			for _, tt := range tests {
				if tt.needsEOF && !style.halfClose {
					continue // would wait for the timeout: see TestAPISilentClient
				}
				t.Run(tt.name, func(t *testing.T) {
					fw := preloaded()
					fw.addErr = tt.addErr
					_, path := startServer(t, fw, 0)
					got := style.request(t, path, tt.req+style.suffix)
					if got != tt.want {
						t.Errorf("request %q\n got %s\nwant %s", tt.req, got, tt.want)
					}
					if tt.check != nil {
						tt.check(t, fw)
					}
				})
			}
		})
	}
}

func TestAPIListEmpty(t *testing.T) {
	_, path := startServer(t, newFake(), 0)
	const want = `{"return":{"entries":[]},"entries":[]}`
	if got := rootlesskitRequest(t, path, `{"execute":"list_hostfwd"}`); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// TestAPISequence drives add/list/remove through one server and checks that
// ids come from Forwards and the listed guest address is the one it used.
func TestAPISequence(t *testing.T) {
	fw := newFake()
	fw.next = 1000
	_, path := startServer(t, fw, 0)
	steps := []struct{ req, want string }{
		{addReq(`"proto":"tcp","host_addr":"","host_port":8080,"guest_addr":"","guest_port":80`), `{"return":{"id":1000}}`},
		{addReq(`"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"fd00::100","guest_port":53`), `{"return":{"id":1001}}`},
		{`{"execute":"remove_hostfwd","arguments":{"id":1000}}`, `{"return":{}}`},
		{`{"execute":"remove_hostfwd","arguments":{"id":1000}}`, errRemoveID},
		{addReq(`"proto":"tcp","host_port":8081,"guest_port":81`), `{"return":{"id":1002}}`},
		{`{"execute":"list_hostfwd"}`, `{"return":{"entries":[` +
			`{"id":1001,"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"fd00::100","guest_port":53},` +
			`{"id":1002,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]},"entries":[` +
			`{"id":1001,"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"fd00::100","guest_port":53},` +
			`{"id":1002,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]}`},
	}
	for i, st := range steps {
		req := podmanRequest
		if i%2 == 1 {
			req = rootlesskitRequest
		}
		if got := req(t, path, st.req+"\n"); got != st.want {
			t.Fatalf("step %d %s\n got %s\nwant %s", i, st.req, got, st.want)
		}
	}
}

func padded(size int) string {
	const head, tail = `{"execute":"list_hostfwd","pad":"`, `"}`
	return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
}

func TestAPITooLarge(t *testing.T) {
	const listEmpty = `{"return":{"entries":[]},"entries":[]}`
	tests := []struct {
		name    string
		req     string
		request func(*testing.T, string, string) string
		want    string
	}{
		{"5000 rootlesskit", padded(5000) + "\n", rootlesskitRequest, errTooLargeMsg},
		{"5000 podman", padded(5000) + "\n", podmanRequest, errTooLargeMsg},
		{"60000 rootlesskit", padded(60000), rootlesskitRequest, errTooLargeMsg},
		{"100000 podman", padded(100000), podmanRequest, errTooLargeMsg},
		{"4096 rootlesskit", padded(4096), rootlesskitRequest, errTooLargeMsg},
		{"4095+newline rootlesskit", padded(4095) + "\n", rootlesskitRequest, errTooLargeMsg},
		{"whitespace 5000", strings.Repeat(" ", 5000), rootlesskitRequest, errTooLargeMsg},
		{"4095 rootlesskit", padded(4095), rootlesskitRequest, listEmpty},
		{"4094+newline podman", padded(4094) + "\n", podmanRequest, listEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path := startServer(t, newFake(), 0)
			if got := tt.request(t, path, tt.req); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestAPIErrorThenMoreData: the server answers an early error while the client
// is still sending; the client must still read the reply and a clean EOF, not
// ECONNRESET (which Linux reports when a unix socket is closed with unread
// data in it).
func TestAPIErrorThenMoreData(t *testing.T) {
	_, path := startServer(t, newFake(), 0)
	for i := 0; i < 10; i++ {
		c := dial(t, path)
		if _, err := c.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the server has answered by now
		if _, err := c.Write([]byte(strings.Repeat("y", 60000))); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(b) != errParseJSON {
			t.Fatalf("round %d: got %q, %v; want %s", i, b, err, errParseJSON)
		}
		if got := rootlesskitRequest(t, path, padded(30000)); got != errTooLargeMsg {
			t.Fatalf("round %d: got %s", i, got)
		}
	}
}

// TestAPISplitWrites: a client that writes the object in pieces and does not
// half-close still gets its answer once the object is complete.
func TestAPISplitWrites(t *testing.T) {
	fw := newFake()
	_, path := startServer(t, fw, 0)
	c := dial(t, path)
	defer c.Close()
	parts := []string{`{"execute":"add_`, `hostfwd","arguments":{"proto":"udp","host_port":`, `53,"guest_port":53}}`, "\n"}
	for _, p := range parts[:3] {
		if _, err := c.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if got, want := string(buf[:n]), `{"return":{"id":42}}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// The server closes after one reply.
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("second read: %d, %v; want EOF", n, err)
	}
}

// TestAPISilentClient: a client that connects and says nothing neither blocks
// another client nor keeps its connection beyond the timeout.
func TestAPISilentClient(t *testing.T) {
	const timeout = 700 * time.Millisecond
	_, path := startServer(t, newFake(), timeout)

	silent := dial(t, path)
	defer silent.Close()
	partial := dial(t, path)
	defer partial.Close()
	if _, err := partial.Write([]byte(`{"execute":`)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(50 * time.Millisecond) // let the server accept them

	type result struct {
		reply string
		err   error
	}
	done := make(chan result, 2)
	go func() { r, err := podmanDo(path, `{"execute":"list_hostfwd"}`+"\n"); done <- result{r, err} }()
	go func() { r, err := rootlesskitDo(path, `{"execute":"list_hostfwd"}`); done <- result{r, err} }()
	for range 2 {
		select {
		case res := <-done:
			got := res.reply
			if res.err != nil {
				t.Fatal(res.err)
			}
			if want := `{"return":{"entries":[]},"entries":[]}`; got != want {
				t.Fatalf("got %s, want %s", got, want)
			}
		case <-time.After(timeout / 2):
			t.Fatalf("second client blocked by the silent one")
		}
	}
	// The silent connections are still open, then closed without a reply.
	for _, c := range []*net.UnixConn{silent, partial} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 100))
		if n != 0 || err != io.EOF {
			t.Fatalf("silent client read %d, %v; want EOF", n, err)
		}
		if el := time.Since(start); el < timeout-100*time.Millisecond || el > 5*time.Second {
			t.Fatalf("silent client closed after %v, want about %v", el, timeout)
		}
	}
}

func TestAPIConcurrentAdds(t *testing.T) {
	fw := newFake()
	_, path := startServer(t, fw, 0)
	const n = 32
	replies := make(chan string, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := rootlesskitDo(path, addReq(fmt.Sprintf(`"proto":"tcp","host_port":%d,"guest_port":80`, 10000+i)))
			if err != nil {
				errs <- err
			}
			replies <- r
		})
	}
	wg.Wait()
	close(replies)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for r := range replies {
		seen[r] = true
	}
	for id := 42; id < 42+n; id++ {
		if r := fmt.Sprintf(`{"return":{"id":%d}}`, id); !seen[r] {
			t.Errorf("missing reply %s (got %v)", r, seen)
		}
	}
}

// TestAPICloseWaitsForHandlers: Close returns only after a running handler has
// finished, and that client still gets its reply.
func TestAPICloseWaitsForHandlers(t *testing.T) {
	fw := newFake()
	fw.block = make(chan struct{})
	fw.entered = make(chan struct{}, 1)
	path := filepath.Join(t.TempDir(), "api.sock")
	s, err := NewAPIServer(path, fw, nil)
	if err != nil {
		t.Fatal(err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve() }()

	reply := make(chan string, 1)
	go func() {
		r, err := rootlesskitDo(path, addReq(`"proto":"tcp","host_port":1,"guest_port":2`))
		if err != nil {
			r = err.Error()
		}
		reply <- r
	}()
	<-fw.entered

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-serveErr:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a handler was running")
	case <-time.After(100 * time.Millisecond):
	}
	close(fw.block)
	if got := <-reply; got != `{"return":{"id":42}}` {
		t.Fatalf("reply %s", got)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file still there after Close: %v", err)
	}
}

func TestAPISocketFile(t *testing.T) {
	// A permissive umask must not leak into the socket's mode. (No test in
	// this package runs in parallel, so changing the umask is safe here.)
	old := syscall.Umask(0)
	dir := t.TempDir()
	path := filepath.Join(dir, "api.sock")
	s, err := NewAPIServer(path, newFake(), nil)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if s.Addr() != path {
		t.Errorf("Addr() = %q, want %q", s.Addr(), path)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != os.ModeSocket|0o600 {
		t.Errorf("socket mode %v, want %v", fi.Mode(), os.ModeSocket|0o600)
	}
	// No temporary directory is left behind.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "api.sock" {
		t.Errorf("directory holds %v, want only api.sock", ents)
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve() }()
	if got := rootlesskitRequest(t, path, `{"execute":"list_hostfwd"}`); got != `{"return":{"entries":[]},"entries":[]}` {
		t.Fatalf("got %s", got)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-serveErr; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file still there after Close: %v", err)
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("dial after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Serve(); err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
}

// TestAPICloseKeepsForeignFile: Close removes the socket only if the file at
// path is still the one it created.
func TestAPICloseKeepsForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	s, err := NewAPIServer(path, newFake(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "mine" {
		t.Fatalf("foreign file clobbered: %q, %v", b, err)
	}
}

func TestAPIStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("stale socket not in place: %v, %v", fi, err)
	}
	fw := newFake()
	s, err := NewAPIServer(path, fw, nil)
	if err != nil {
		t.Fatalf("NewAPIServer over a stale socket: %v", err)
	}
	defer s.Close()
	go s.Serve()
	if got := podmanRequest(t, path, addReq(`"proto":"tcp","host_port":8080,"guest_addr":"","guest_port":80`)+"\n"); got != `{"return":{"id":42}}` {
		t.Fatalf("got %s", got)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode() != os.ModeSocket|0o600 {
		t.Fatalf("socket after replace: %v, %v", fi, err)
	}
}

func TestAPILiveSocketKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before, _ := os.Lstat(path)
	if s, err := NewAPIServer(path, newFake(), nil); err == nil || !strings.Contains(err.Error(), "in use") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("NewAPIServer over a live socket: %v, want an 'in use' error", err)
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("live socket replaced: %v", err)
	}
}

func TestAPIRefusesNonSocket(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
		check func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("important"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, path string) {
			if b, err := os.ReadFile(path); err != nil || string(b) != "important" {
				t.Fatalf("regular file clobbered: %q, %v", b, err)
			}
		}},
		{"empty regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, path string) {
			if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("regular file clobbered: %v, %v", fi, err)
			}
		}},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, path string) {
			if fi, err := os.Lstat(path); err != nil || !fi.IsDir() {
				t.Fatalf("directory clobbered: %v, %v", fi, err)
			}
		}},
		{"dangling symlink", func(t *testing.T, path string) {
			if err := os.Symlink(path+".target", path); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, path string) {
			if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSymlink {
				t.Fatalf("symlink clobbered: %v, %v", fi, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "api.sock")
			tt.setup(t, path)
			s, err := NewAPIServer(path, newFake(), nil)
			if err == nil {
				s.Close()
				t.Fatal("NewAPIServer succeeded, want an error")
			}
			if !strings.Contains(err.Error(), "not a socket") {
				t.Errorf("error %q does not say 'not a socket'", err)
			}
			tt.check(t, path)
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("directory holds %v, want only the original file", ents)
			}
		})
	}
}

// TestAPILongPath: a path that fits a sockaddr_un while the temporary name
// next to it would not.
func TestAPILongPath(t *testing.T) {
	base := t.TempDir()
	dirLen := maxSunPath - len("/a")
	if len(base)+2 > dirLen {
		t.Skipf("temp dir %q too long for this test", base)
	}
	dir := base + "/" + strings.Repeat("d", dirLen-len(base)-1)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := dir + "/a"
	if len(path) != maxSunPath {
		t.Fatalf("path length %d, want %d", len(path), maxSunPath)
	}
	s, err := NewAPIServer(path, newFake(), nil)
	if err != nil {
		t.Fatalf("NewAPIServer: %v", err)
	}
	defer s.Close()
	go s.Serve()
	if fi, err := os.Lstat(path); err != nil || fi.Mode() != os.ModeSocket|0o600 {
		t.Fatalf("socket: %v, %v", fi, err)
	}
	if got := rootlesskitRequest(t, path, `{"execute":"list_hostfwd"}`); got != `{"return":{"entries":[]},"entries":[]}` {
		t.Fatalf("got %s", got)
	}

	tooLong := dir + "/ab"
	if _, err := NewAPIServer(tooLong, newFake(), nil); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("NewAPIServer(%d-byte path): %v, want 'too long'", len(tooLong), err)
	}
}

func TestNewAPIServerBadArgs(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewAPIServer(filepath.Join(dir, "x.sock"), nil, nil); err == nil {
		t.Error("nil Forwards accepted")
	}
	if _, err := NewAPIServer("", newFake(), nil); err == nil {
		t.Error("empty path accepted")
	}
	if _, err := NewAPIServer("@abstract", newFake(), nil); err == nil {
		t.Error("abstract path accepted")
	}
	if _, err := NewAPIServer(filepath.Join(dir, "missing", "x.sock"), newFake(), nil); err == nil {
		t.Error("path in a missing directory accepted")
	}
}

func TestMoveNoReplace(t *testing.T) {
	dir := t.TempDir()
	from, to := filepath.Join(dir, "from"), filepath.Join(dir, "to")
	if err := os.WriteFile(from, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := moveNoReplace(from, to); !errors.Is(err, os.ErrExist) {
		t.Fatalf("moveNoReplace onto an existing file: %v, want EEXIST", err)
	}
	if b, _ := os.ReadFile(to); string(b) != "b" {
		t.Fatalf("destination replaced: %q", b)
	}
	if err := os.Remove(to); err != nil {
		t.Fatal(err)
	}
	if err := moveNoReplace(from, to); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(from); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("source still there: %v", err)
	}
}

// TestAPIListSource: each entry says where it came from, in a field of
// its own after slirp4netns' six (which keep their names and order).
func TestAPIListSource(t *testing.T) {
	f := newFake()
	f.entries = []Entry{
		{ID: 1, Spec: Spec{ProtoTCP, netip.MustParseAddr("127.0.0.1"), 8080, defaultGuest, 80}, Source: SourceFlag},
		{ID: 2, Spec: Spec{ProtoUDP, netip.IPv4Unspecified(), 53, defaultGuest, 53}, Source: SourceAuto},
	}
	_, path := startServer(t, f, 0)
	const entries = `[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80,"source":"flag"},` +
		`{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":53,"guest_addr":"10.0.2.100","guest_port":53,"source":"auto"}]`
	const want = `{"return":{"entries":` + entries + `},"entries":` + entries + `}`
	if got := rootlesskitRequest(t, path, `{"execute":"list_hostfwd"}`); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// TestEngineSources: the engine lists each forward with the source it
// was added from; Add (the API's) is "api".
func TestEngineSources(t *testing.T) {
	e := NewEngine(nil, 0, Addresses{Guest: defaultGuest}, nil)
	defer e.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	if _, err := e.AddFrom(Spec{Proto: ProtoTCP, HostAddr: lo, HostPort: freePort(t), GuestPort: 80}, SourceFlag); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Add(Spec{Proto: ProtoTCP, HostAddr: lo, HostPort: freePort(t), GuestPort: 81}); err != nil {
		t.Fatal(err)
	}
	var got []Source
	for _, en := range e.List() {
		got = append(got, en.Source)
	}
	if len(got) != 2 || got[0] != SourceFlag || got[1] != SourceAPI {
		t.Errorf("sources %v, want [flag api]", got)
	}
}
