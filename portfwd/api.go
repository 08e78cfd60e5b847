package portfwd

import (
	"bytes"
	"container/list"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Forwards is what the API drives; the real implementation lives elsewhere.
type Forwards interface {
	Add(spec Spec) (id int, err error) // err text becomes the error desc
	Remove(id int) error               // unknown id -> error
	List() []Entry
}

// Entry is one active forward as reported by Forwards.List. Spec.GuestAddr
// should be the guest address actually used.
type Entry struct {
	ID     int
	Spec   Spec
	Source Source // "" when unknown: then not listed
}

const (
	// maxRequest: requests of this many bytes or more are refused, like
	// slirp4netns, which reads into a 4096-byte buffer.
	maxRequest = 4096
	// maxDrain bounds how much is read and discarded after the reply.
	maxDrain = 64 << 10
	// defaultConnTimeout is the total time a connection may take.
	defaultConnTimeout = 5 * time.Second
	// maxSunPath is the longest path a sockaddr_un holds (108 bytes with NUL).
	maxSunPath = 107
	// maxWaiting bounds the connections whose handler waits on the client
	// (for its request, or for its EOF after the reply). At the bound one
	// is dropped for the newcomer: the oldest of the process holding the
	// most (SO_PEERCRED), so a client that connects and sends nothing, or
	// opens connections in a loop, holds at most this many goroutines and
	// fds and only ever drops its own, never another process's request.
	// podman and rootlesskit send one request per connection, one or a few
	// at a time.
	maxWaiting = 64
)

// APIServer serves the slirp4netns JSON API (add_hostfwd, list_hostfwd,
// remove_hostfwd) on a unix stream socket, one request per connection.
type APIServer struct {
	path string
	fw   Forwards
	log  *slog.Logger
	ln   *net.UnixListener
	fi   os.FileInfo // the socket file we created, to remove only our own

	timeout time.Duration // per connection, total; tests shorten it

	mu       sync.Mutex
	closed   bool
	wg       sync.WaitGroup // one per connection handler
	waiting  list.List      // of *apiWaiter, oldest first
	perPeer  map[int32]int  // waiters by client pid
	shedding bool           // dropping waiters since the bound was hit
	shed     int            // waiters dropped in this episode
	dropped  int            // waiters dropped in all
}

// apiWaiter is a connection whose handler waits on the client.
type apiWaiter struct {
	c       *net.UnixConn
	pid     int32 // the client's, 0 if unknown
	dropped atomic.Bool
	e       *list.Element
}

// peerPID returns the pid of c's client (0 when it is not known, e.g. in
// another pid namespace).
func peerPID(c *net.UnixConn) int32 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var pid int32
	rc.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = cred.Pid
		}
	})
	return pid
}

// wait registers c, whose client is pid, as waiting on its client. With
// maxWaiting waiters already, it drops the oldest waiter of the client
// holding the most. c's deadline must be set before: the drop works by
// moving it to the past.
func (s *APIServer) wait(c *net.UnixConn, pid int32) *apiWaiter {
	w := &apiWaiter{c: c, pid: pid}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perPeer == nil {
		s.perPeer = map[int32]int{}
	}
	if s.waiting.Len() >= maxWaiting {
		s.perPeer[pid]++ // the newcomer competes too
		most := 0
		for _, n := range s.perPeer {
			most = max(most, n)
		}
		s.perPeer[pid]--
		for e := s.waiting.Front(); e != nil; e = e.Next() {
			if old := e.Value.(*apiWaiter); s.perPeer[old.pid] == most || (old.pid == pid && s.perPeer[pid]+1 == most) {
				s.drop(old)
				break
			}
		}
		if !s.shedding {
			s.shedding = true
			s.log.Warn("api socket: too many clients waited on; dropping the oldest of the busiest client", "max", maxWaiting, "client_pid", pid)
		}
		s.shed++
	}
	w.e = s.waiting.PushBack(w)
	s.perPeer[pid]++
	return w
}

// drop unregisters w and wakes its handler. s.mu held.
func (s *APIServer) drop(w *apiWaiter) {
	s.waiting.Remove(w.e)
	if s.perPeer[w.pid]--; s.perPeer[w.pid] == 0 {
		delete(s.perPeer, w.pid)
	}
	w.dropped.Store(true)
	w.c.SetDeadline(time.Unix(1, 0)) // its read returns now
	s.dropped++
}

// done unregisters w; the episode of drops ends when half the slots are
// free again.
func (s *APIServer) done(w *apiWaiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !w.dropped.Load() {
		s.waiting.Remove(w.e)
		if s.perPeer[w.pid]--; s.perPeer[w.pid] == 0 {
			delete(s.perPeer, w.pid)
		}
	}
	if s.shedding && s.waiting.Len() <= maxWaiting/2 {
		s.log.Info("api socket: clients no longer dropped", "dropped", s.shed)
		s.shedding, s.shed = false, 0
	}
}

// NewAPIServer creates the API socket at path with mode 0600 and returns a
// server ready to Serve. A stale socket at path (one that refuses connections)
// is removed first; anything else already at path (a live socket, a regular
// file, a directory, a symlink...) is left alone and reported as an error.
// log may be nil.
func NewAPIServer(path string, fw Forwards, log *slog.Logger) (*APIServer, error) {
	if fw == nil {
		return nil, errors.New("api socket: nil Forwards")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if path == "" || path[0] == '@' {
		return nil, fmt.Errorf("api socket %q: want a file system path", path)
	}
	if len(path) > maxSunPath {
		return nil, fmt.Errorf("api socket %q: path too long (%d bytes, max %d)", path, len(path), maxSunPath)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, fi, err := listenPrivate(path)
	if err != nil {
		return nil, err
	}
	log.Info("api socket listening", "path", path)
	return &APIServer{path: path, fw: fw, log: log, ln: ln, fi: fi, timeout: defaultConnTimeout}, nil
}

// removeStale removes a stale unix socket at path. A socket is stale when
// connecting to it is refused (no process listens on it any more: the usual
// leftover of a killed slirp4netns/rootlessnet). A socket someone listens on,
// or one we may not connect to, and any non-socket file are kept: error.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("api socket %s: refusing to replace existing %s that is not a socket", path, describeMode(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("api socket %s: in use by a running server", path)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("api socket: removing stale socket: %w", err)
		}
		return nil
	case errors.Is(err, syscall.ENOENT):
		return nil // vanished meanwhile
	default:
		return fmt.Errorf("api socket %s: exists and cannot be checked for staleness: %w", path, err)
	}
}

func describeMode(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&os.ModeSymlink != 0:
		return "symlink"
	default:
		return "file (" + m.Type().String() + ")"
	}
}

// listenPrivate listens on a unix socket at path that never exists with
// permissions looser than 0600.
//
// bind(2) creates the socket file with mode 0777 &^ umask and there is no
// fchmod/umask-per-call for it: fchmod on a socket fd does not change the file,
// and syscall.Umask is process-wide, so changing it around Listen would race
// with files created by other goroutines. Chmod after Listen leaves a window
// in which others may connect. So we bind inside a fresh private directory
// (mode 0700, only we can reach into it) in the same directory as path,
// Chmod the socket to 0600 there, and only then move it into place. The move
// is rename(2) with RENAME_NOREPLACE (or link(2) where the file system lacks
// it): atomic, same file system, and never replaces whatever appeared at path
// since removeStale looked. Go's listener is told not to unlink the temporary
// name on Close; Close removes path itself, if it is still our socket.
//
// If the temporary path would not fit in a sockaddr_un, the socket is bound
// through /proc/self/fd/N/s, N an O_PATH descriptor of the private directory.
//
// If the process is killed between Mkdir and the final Remove an empty
// ".rnapi*" directory may be left behind; it is harmless.
func listenPrivate(path string) (ln *net.UnixListener, fi os.FileInfo, err error) {
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".rnapi")
	if err != nil {
		return nil, nil, fmt.Errorf("api socket: %w", err)
	}
	defer func() {
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			os.RemoveAll(tmpDir)
		}
	}()
	// MkdirTemp asks for 0700 but umask could have taken bits we need.
	if err := os.Chmod(tmpDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("api socket: %w", err)
	}
	tmpSock := filepath.Join(tmpDir, "s")
	bindPath := tmpSock
	if len(bindPath) > maxSunPath {
		dfd, err := unix.Open(tmpDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("api socket: %w", err)
		}
		defer unix.Close(dfd)
		bindPath = fmt.Sprintf("/proc/self/fd/%d/s", dfd)
	}
	ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: bindPath, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("api socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmpSock, 0o600); err != nil {
		return nil, nil, fmt.Errorf("api socket: %w", err)
	}
	if fi, err = os.Lstat(tmpSock); err != nil {
		return nil, nil, fmt.Errorf("api socket: %w", err)
	}
	if err := moveNoReplace(tmpSock, path); err != nil {
		return nil, nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	os.Remove(tmpDir)
	return ln, fi, nil
}

// moveNoReplace moves from to to, failing with EEXIST if to exists.
func moveNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	if err := os.Link(from, to); err != nil {
		return err
	}
	return os.Remove(from)
}

// Addr returns the path of the API socket.
func (s *APIServer) Addr() string { return s.path }

// Serve accepts connections until Close, handling each in its own goroutine.
// It returns nil after Close, or the error that stopped accepting.
func (s *APIServer) Serve() error {
	var backoff time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if isTemporaryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("api socket: accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("api socket: accept: %w", err)
		}
		backoff = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.wg.Add(1) // under mu, so never concurrent with Close's Wait
		s.mu.Unlock()
		go s.handle(c)
	}
}

func isTemporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EINTR)
}

// Close stops accepting, waits for the running handlers (each bounded by its
// connection deadline) and removes the socket file if it is still the one
// NewAPIServer created. Calling it again is a no-op.
func (s *APIServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	err := s.ln.Close()
	s.wg.Wait()
	if fi, lerr := os.Lstat(s.path); lerr == nil && os.SameFile(fi, s.fi) {
		if rerr := os.Remove(s.path); rerr != nil && err == nil {
			err = rerr
		}
	}
	s.log.Info("api socket closed", "path", s.path)
	return err
}

var (
	errTooLarge = errors.New("too large message")
	errParse    = errors.New("cannot parse JSON")
)

func (s *APIServer) handle(c *net.UnixConn) {
	defer s.wg.Done()
	defer c.Close()
	deadline := time.Now().Add(s.timeout)
	c.SetDeadline(deadline)

	var reply []byte
	pid := peerPID(c)
	w := s.wait(c, pid)
	req, err := readRequest(c)
	s.done(w)
	if w.dropped.Load() && (err == nil || errors.Is(err, errTooLarge) || errors.Is(err, errParse)) {
		// Dropped after the request was read in full: answer it all the
		// same (no more drops can reach w after done).
		c.SetDeadline(deadline)
		w.dropped.Store(false)
	}
	switch {
	case errors.Is(err, errTooLarge), errors.Is(err, errParse):
		s.log.Warn("api request refused", "err", err)
		reply = errorReply("bad request: " + err.Error())
	case err != nil && w.dropped.Load():
		s.log.Debug("api request not read: dropped for a newer client")
		return
	case err != nil:
		// Timeout or connection error: nobody to answer, or too late to.
		s.log.Warn("api request not read", "err", err)
		return
	default:
		reply = s.dispatch(req)
	}
	if _, err := c.Write(reply); err != nil {
		s.log.Warn("api reply not sent", "err", err)
		return
	}
	// Tell the client we are done (a client reading until EOF returns now),
	// then read and discard what it may still send, so that closing does not
	// meet unread data: on Linux that makes the peer's next read fail with
	// ECONNRESET instead of EOF, and a ReadAll client would lose the reply.
	c.CloseWrite()
	w = s.wait(c, pid)
	io.Copy(io.Discard, io.LimitReader(c, maxDrain))
	s.done(w)
}

// readRequest reads one request: until a complete JSON value has been read
// (podman writes the object and "\n" but does not half-close) or EOF
// (rootlesskit half-closes). Bytes after the value that arrived with it must be
// whitespace. Reaching maxRequest bytes is errTooLarge, invalid or incomplete
// JSON is errParse; other errors are I/O errors (e.g. the deadline).
//
// The work is linear in the bytes received: json.Decoder scans each byte
// once, keeping its scanner state across reads, however the client splits
// its writes (re-parsing the whole buffer after every read was quadratic
// for a client trickling a byte at a time).
func readRequest(r io.Reader) ([]byte, error) {
	cr := &chunkedReader{r: r}
	dec := json.NewDecoder(cr)
	var v json.RawMessage
	var syn *json.SyntaxError
	switch err := dec.Decode(&v); {
	case err == nil:
	case errors.Is(err, errTooLarge):
		return nil, errTooLarge
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &syn):
		return nil, errParse // empty, incomplete or invalid
	default:
		return nil, err
	}
	// What arrived after the value: in the decoder's buffer and in ours.
	rest, _ := io.ReadAll(dec.Buffered())
	if len(bytes.TrimSpace(rest)) != 0 || len(bytes.TrimSpace(cr.pending())) != 0 {
		return nil, errParse
	}
	return v, nil
}

// chunkedReader reads from r into one buffer of maxRequest bytes, a whole
// read at a time, and hands that out to the decoder. Reaching maxRequest is
// errTooLarge as soon as the read that reached it returns, before the
// decoder sees any of it, however the decoder sizes its own reads: so a
// request's fate depends only on what the client sent, and in which pieces
// the kernel delivered it, as with a plain 4096-byte buffer.
type chunkedReader struct {
	r     io.Reader
	buf   [maxRequest]byte
	total int // bytes read from r
	off   int // bytes of buf[:total] handed out
	err   error
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.off == c.total {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.r.Read(c.buf[c.total:])
		c.total += n
		if c.total >= maxRequest {
			c.err = errTooLarge
			return 0, c.err
		}
		c.err = err
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, c.buf[c.off:c.total])
	c.off += n
	return n, nil
}

// pending returns the bytes read from r not yet handed out.
func (c *chunkedReader) pending() []byte { return c.buf[c.off:c.total] }

type errorBody struct {
	Error struct {
		Desc string `json:"desc"`
	} `json:"error"`
}

func errorReply(desc string) []byte {
	var b errorBody
	b.Error.Desc = desc
	return marshal(b)
}

// marshal encodes v compactly without HTML escaping and without a newline.
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only our own reply types are encoded; they cannot fail.
		panic("portfwd: encoding reply: " + err.Error())
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

type jsonEntry struct {
	ID        int    `json:"id"`
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  uint16 `json:"host_port"`
	GuestAddr string `json:"guest_addr"`
	GuestPort uint16 `json:"guest_port"`
	// Source is rootlessnet's own: flag, api or auto. slirp4netns has no
	// such field; its clients decode entries into structs and ignore it.
	Source string `json:"source,omitempty"`
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// dispatch executes one request (a complete JSON value) and returns the reply.
func (s *APIServer) dispatch(req []byte) []byte {
	// Only an object is a request; json.Unmarshal would take null as an
	// empty map.
	if req[0] != '{' {
		return errorReply("bad request: cannot parse JSON")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(req, &top); err != nil {
		return errorReply("bad request: cannot parse JSON")
	}
	var execute string
	if raw, ok := top["execute"]; !ok || json.Unmarshal(raw, &execute) != nil || isNull(raw) {
		s.log.Warn("api request refused", "err", "no execute found")
		return errorReply("bad request: no execute found")
	}
	var args map[string]json.RawMessage
	if raw, ok := top["arguments"]; ok {
		_ = json.Unmarshal(raw, &args) // not an object: every argument is missing
	}

	logExec := execute
	if len(logExec) > 64 {
		logExec = logExec[:64] + "..."
	}
	switch execute {
	case "add_hostfwd":
		spec, field := parseAddArgs(args)
		if field != "" {
			s.log.Warn("api request refused", "execute", logExec, "bad", field)
			return errorReply("bad request: add_hostfwd: bad arguments." + field)
		}
		id, err := s.fw.Add(spec)
		if err != nil {
			s.log.Warn("api add_hostfwd failed", "spec", spec.String(), "err", err)
			return errorReply(err.Error())
		}
		s.log.Info("api add_hostfwd", "id", id, "spec", spec.String())
		var r struct {
			Return struct {
				ID int `json:"id"`
			} `json:"return"`
		}
		r.Return.ID = id
		return marshal(r)

	case "list_hostfwd":
		entries := []jsonEntry{}
		for _, e := range s.fw.List() {
			proto := e.Spec.Proto
			if proto == "" {
				proto = ProtoTCP
			}
			host := e.Spec.HostAddr
			if !host.IsValid() {
				host = netip.IPv4Unspecified()
			}
			entries = append(entries, jsonEntry{
				ID:        e.ID,
				Proto:     string(proto),
				HostAddr:  host.String(),
				HostPort:  e.Spec.HostPort,
				GuestAddr: addrString(e.Spec.GuestAddr),
				GuestPort: e.Spec.GuestPort,
				Source:    string(e.Source),
			})
		}
		s.log.Info("api list_hostfwd", "entries", len(entries))
		// slirp4netns 1.2 answers {"entries":[...]}, its documentation says
		// {"return":{"entries":[...]}}: give both.
		var r struct {
			Return struct {
				Entries []jsonEntry `json:"entries"`
			} `json:"return"`
			Entries []jsonEntry `json:"entries"`
		}
		r.Return.Entries, r.Entries = entries, entries
		return marshal(r)

	case "remove_hostfwd":
		id, ok := parseUint(args["id"], 1<<31-1)
		if !ok || id < 1 {
			s.log.Warn("api request refused", "execute", logExec, "bad", "id")
			return errorReply("bad request: remove_hostfwd: bad arguments.id")
		}
		if err := s.fw.Remove(int(id)); err != nil {
			s.log.Warn("api remove_hostfwd failed", "id", id, "err", err)
			return errorReply("bad request: remove_hostfwd: bad arguments.id")
		}
		s.log.Info("api remove_hostfwd", "id", id)
		return []byte(`{"return":{}}`)

	default:
		s.log.Warn("api request refused", "execute", logExec, "err", "unknown execute")
		return errorReply("bad request: unknown execute")
	}
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// parseAddArgs validates add_hostfwd's arguments in slirp4netns' order and
// returns the spec, or the name of the first bad argument.
//
//   - proto: "tcp" or "udp".
//   - host_addr: IPv4 or IPv6 address; missing, null or "" means 0.0.0.0.
//   - guest_addr: IPv4 or IPv6 address without zone; missing, null, "" or an
//     unspecified address (0.0.0.0, ::, which libslirp also takes as "the
//     default guest") give a zero GuestAddr, for the caller to fill in.
//   - host_port, guest_port: JSON integers 1..65535, written as plain digits
//     (no fraction or exponent: 80.5, 80.0 and 8e1 are refused, as are strings).
//
// IPv4-mapped IPv6 addresses are taken as the IPv4 address they map.
func parseAddArgs(args map[string]json.RawMessage) (Spec, string) {
	var spec Spec
	var proto string
	if raw, ok := args["proto"]; !ok || isNull(raw) || json.Unmarshal(raw, &proto) != nil {
		return spec, "proto"
	}
	switch proto {
	case "tcp", "udp":
		spec.Proto = Proto(proto)
	default:
		return spec, "proto"
	}

	host, ok := parseAddr(args["host_addr"], true)
	if !ok {
		return spec, "host_addr"
	}
	if !host.IsValid() {
		host = netip.IPv4Unspecified()
	}
	spec.HostAddr = host

	hp, ok := parseUint(args["host_port"], 65535)
	if !ok || hp == 0 {
		return spec, "host_port"
	}
	spec.HostPort = uint16(hp)

	guest, ok := parseAddr(args["guest_addr"], false)
	if !ok {
		return spec, "guest_addr"
	}
	if guest.IsUnspecified() {
		guest = netip.Addr{}
	}
	spec.GuestAddr = guest

	gp, ok := parseUint(args["guest_port"], 65535)
	if !ok || gp == 0 {
		return spec, "guest_port"
	}
	spec.GuestPort = uint16(gp)
	return spec, ""
}

// parseAddr parses an optional JSON string holding an IP address. Missing,
// null and "" give the zero Addr.
func parseAddr(raw json.RawMessage, allowZone bool) (netip.Addr, bool) {
	if raw == nil || isNull(raw) {
		return netip.Addr{}, true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return netip.Addr{}, false
	}
	if s == "" {
		return netip.Addr{}, true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || (!allowZone && a.Zone() != "") {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// parseUint parses a JSON number written as plain decimal digits, up to limit.
func parseUint(raw json.RawMessage, limit uint64) (uint64, bool) {
	s := string(raw)
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > limit {
		return 0, false
	}
	return n, true
}
