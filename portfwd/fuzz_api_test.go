package portfwd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fuzzForwards is the Forwards the API fuzzer drives: in memory, two
// forwards preloaded (ids 7 and 9), Add failing for host ports divisible
// by 7 with a message that quotes the request's address (so that error
// texts with odd characters go through the reply encoder), and a record
// of every spec the server passed on.
type fuzzForwards struct {
	mu      sync.Mutex
	next    int
	entries []Entry
	added   []Spec
	removed []int
}

func newFuzzForwards() *fuzzForwards {
	return &fuzzForwards{next: 100, entries: []Entry{
		{ID: 7, Spec: Spec{ProtoTCP, netip.IPv4Unspecified(), 8080, netip.MustParseAddr("10.0.2.100"), 80}},
		{ID: 9, Spec: Spec{ProtoUDP, netip.IPv6Loopback(), 5353, netip.MustParseAddr("fd00::100"), 53}},
	}}
}

func (f *fuzzForwards) Add(spec Spec) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added = append(f.added, spec)
	if spec.HostPort%7 == 0 {
		return 0, fmt.Errorf("listen %s %s: \"<busy>\" & \x01\u2028 in use", spec.Proto, netip.AddrPortFrom(spec.HostAddr, spec.HostPort))
	}
	id := f.next
	f.next++
	f.entries = append(f.entries, Entry{ID: id, Spec: spec})
	return id, nil
}

func (f *fuzzForwards) Remove(id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, id)
	for i, e := range f.entries {
		if e.ID == id {
			f.entries = slices.Delete(f.entries, i, i+1)
			return nil
		}
	}
	return fmt.Errorf("no forward with id %d", id)
}

func (f *fuzzForwards) List() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

// chunkReader returns at most n bytes per Read, as a client that writes
// in pieces would deliver them.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// checkAPIReply fails unless reply is exactly one JSON object holding
// either "return" or "error" (not both), with an error's "desc" a
// non-empty string.
func checkAPIReply(t *testing.T, req, reply []byte) {
	t.Helper()
	if !json.Valid(reply) {
		t.Fatalf("request %q: reply %q is not valid JSON", req, reply)
	}
	dec := json.NewDecoder(bytes.NewReader(reply))
	var top map[string]json.RawMessage
	if err := dec.Decode(&top); err != nil || top == nil {
		t.Fatalf("request %q: reply %q is not a JSON object: %v", req, reply, err)
	}
	if dec.More() || dec.InputOffset() != int64(len(reply)) {
		t.Fatalf("request %q: reply %q has bytes after the object", req, reply)
	}
	ret, hasRet := top["return"]
	e, hasErr := top["error"]
	if hasRet == hasErr {
		t.Fatalf("request %q: reply %q must have exactly one of return and error", req, reply)
	}
	if hasErr {
		var body struct {
			Desc *string `json:"desc"`
		}
		if err := json.Unmarshal(e, &body); err != nil || body.Desc == nil || *body.Desc == "" {
			t.Fatalf("request %q: error reply %q lacks a desc string", req, reply)
		}
		return
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(ret, &obj); err != nil || obj == nil {
		t.Fatalf("request %q: return %q is not an object", req, ret)
	}
}

// checkAddedSpecs fails if the server passed Forwards.Add a spec that
// parseAddArgs should have refused.
func checkAddedSpecs(t *testing.T, req []byte, fw *fuzzForwards) {
	t.Helper()
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, s := range fw.added {
		ok := (s.Proto == ProtoTCP || s.Proto == ProtoUDP) &&
			s.HostPort != 0 && s.GuestPort != 0 &&
			s.HostAddr.IsValid() && !s.HostAddr.Is4In6() &&
			(!s.GuestAddr.IsValid() || (s.GuestAddr.Zone() == "" && !s.GuestAddr.IsUnspecified() && !s.GuestAddr.Is4In6()))
		if !ok {
			t.Fatalf("request %q: Forwards.Add got invalid spec %#v", req, s)
		}
	}
	if len(fw.added) > 1 || len(fw.removed) > 1 {
		t.Fatalf("request %q: one request made %d adds and %d removes", req, len(fw.added), len(fw.removed))
	}
}

// replyInternal runs what APIServer.handle runs, on a reader instead of a
// connection.
func replyInternal(s *APIServer, r io.Reader) []byte {
	req, err := readRequest(r)
	switch {
	case errors.Is(err, errTooLarge), errors.Is(err, errParse):
		return errorReply("bad request: " + err.Error())
	case err != nil:
		return nil
	default:
		return s.dispatch(req)
	}
}

// unixPair returns both ends of a connected unix stream socketpair.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("api-fuzz-%d", i))
		c, err := net.FileConn(f) // dups fd
		f.Close()
		if err != nil {
			t.Fatalf("FileConn: %v", err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

// FuzzAPIRequest feeds arbitrary bytes to the slirp4netns API the way a
// client does (rootlesskit style: write, half-close, read until EOF)
// through the server's real connection handler, and to its request
// reader in chunks. The handler must not panic, must answer exactly one
// JSON object with "return" or "error", and must only hand Forwards
// specs that are valid.
func FuzzAPIRequest(f *testing.F) {
	for _, s := range []string{
		`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}`,
		`{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "", "host_port": 8080, "guest_addr": "", "guest_port": 80}}` + "\n",
		`{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::ffff:127.0.0.1","host_port":7,"guest_addr":"fe80::1%eth0","guest_port":53}}`,
		`{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::1%lo","host_port":14,"guest_addr":"::","guest_port":65535}}`,
		`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":80.0,"guest_port":8e1}}`,
		`{"execute":"add_hostfwd","arguments":[1,2]}`,
		`{"execute":"add_hostfwd","arguments":{"proto":null,"host_port":"80","guest_port":-1}}`,
		`{"execute":"list_hostfwd"}`,
		`{"execute":"list_hostfwd","arguments":{}}` + "\r\n",
		`{"execute":"remove_hostfwd","arguments":{"id":7}}`,
		`{"execute":"remove_hostfwd","arguments":{"id":99999999999999999999}}`,
		`{"execute":"remove_hostfwd","arguments":{"id":"7"}}`,
		`{"execute":"\u0000\ud800"}`,
		`{"execute":null}`, `{"execute":5}`, `{}`, `[]`, `null`, `"x"`, `1`, `1 2`, `{"a":1}{"b":2}`,
		`{"execute":"list_hostfwd"} x`, `{"execute":"list_hostfwd"`, ``, ` `, "\xff\xfe", `{"execute":"list_hostfwd","execute":"quit"}`,
		strings.Repeat(`[`, 3000), strings.Repeat(" ", 4095), `{"execute":"list_hostfwd","pad":"` + strings.Repeat("x", 4060) + `"}`,
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(1))
	}
	// A handler logging at debug level formats every field it logs.
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))

	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		// The real handler on a real connection.
		fw := newFuzzForwards()
		s := &APIServer{fw: fw, log: log, timeout: 10 * time.Second}
		srv, cli := unixPair(t)
		defer cli.Close()
		s.wg.Add(1)
		handled := make(chan struct{})
		go func() {
			defer close(handled)
			s.handle(srv)
		}()
		cli.SetDeadline(time.Now().Add(10 * time.Second))
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			// An early reply may close the server side while big inputs
			// are still being written: EPIPE is fine.
			cli.Write(data)
			cli.CloseWrite()
		}()
		reply, err := io.ReadAll(cli)
		cli.Close()
		<-wrote
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatalf("request %q: handler still running 10 s after the reply", data)
		}
		if err != nil {
			t.Fatalf("request %q: reading the reply: %v (got %q)", data, err, reply)
		}
		checkAPIReply(t, data, reply)
		checkAddedSpecs(t, data, fw)
		if len(data) >= maxRequest && !bytes.Equal(reply, errorReply("bad request: too large message")) {
			t.Fatalf("request of %d bytes: reply %q, want too large", len(data), reply)
		}

		// The same bytes read in one piece give the same reply.
		whole := replyInternal(&APIServer{fw: newFuzzForwards(), log: log}, bytes.NewReader(data))
		if !bytes.Equal(whole, reply) {
			t.Fatalf("request %q: reply over the socket %q, read whole %q", data, reply, whole)
		}

		// In pieces (a client that writes in several calls): a valid
		// reply too, though an early complete value may answer sooner.
		fw2 := newFuzzForwards()
		pieces := replyInternal(&APIServer{fw: fw2, log: log}, chunkReader{bytes.NewReader(data), int(chunk)%64 + 1})
		if pieces == nil {
			t.Fatalf("request %q in chunks of %d: no reply", data, int(chunk)%64+1)
		}
		checkAPIReply(t, data, pieces)
		checkAddedSpecs(t, data, fw2)
	})
}
