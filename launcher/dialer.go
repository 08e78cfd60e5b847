package launcher

// The dialer (--port-bypass): a child that joins the container's user and
// network namespaces, as the TAP's child did, and stays. For each request
// it connects to an address inside the namespace and passes the connected
// socket back over SCM_RIGHTS, so that the parent copies between two
// kernel sockets (splice) instead of through the netstack. The connection
// comes from inside the namespace: the guest sees its own address as the
// peer, not the client's.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/userns"
)

const (
	// DefaultDialTimeout bounds a connect whose request names none.
	DefaultDialTimeout = 10 * time.Second
	// maxDialTimeout caps any connect, whatever the request says.
	maxDialTimeout = time.Minute
	// maxDialsInFlight bounds the connects the dialer runs at once; more
	// are answered with an error at once rather than queued.
	maxDialsInFlight = 1024
	// dialerHandshakeTimeout bounds the start: joining, then DialerReady.
	dialerHandshakeTimeout = 10 * time.Second
	// dialerExitTimeout is how long Close waits for the dialer to exit on
	// its own before killing it.
	dialerExitTimeout = 5 * time.Second
	// dialerEnv carries "FD,PID" of a dialer to the program this process
	// executes (the sandbox's re-execution).
	dialerEnv = "_ROOTLESSNET_DIALER"
)

// ErrDialerGone is the error of dials once the dialer exited or was
// closed.
var ErrDialerGone = errors.New("the port bypass dialer is gone")

// ---------------------------------------------------------------------
// Child side.

func dialerMain(conn *userns.Conn) int {
	conn.SetDeadline(time.Now().Add(dialerHandshakeTimeout))
	var start DialerStart
	files, err := conn.Recv(&start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rootlessnet dialer:", err)
		return 1
	}
	if len(files) != 1 {
		closeFiles(files)
		conn.Send(DialerReady{Error: fmt.Sprintf("the dialer got %d descriptors for its stderr, want 1", len(files))})
		return 1
	}
	// Log to the parent's stderr from now on. The pipe that stderr was
	// closes here: the parent stops reading it (it may even execute
	// itself again, under the sandbox).
	err = unix.Dup3(int(files[0].Fd()), 2, 0)
	files[0].Close()
	if err != nil {
		conn.Send(DialerReady{Error: fmt.Sprintf("the dialer's stderr: %v", err)})
		return 1
	}
	var level slog.Level
	if level.UnmarshalText([]byte(start.LogLevel)) != nil {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "port-bypass-dialer")
	if err := conn.Send(DialerReady{}); err != nil {
		return 1
	}
	conn.SetDeadline(time.Time{})
	return serveDials(conn, log)
}

// serveDials answers requests until the parent closes the channel (it
// exited); each connect runs on its own, so that a slow one holds no
// other back.
func serveDials(conn *userns.Conn, log *slog.Logger) int {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Cancelling aborts the connects in flight: the parent is gone.
	defer wg.Wait()
	defer cancel()
	sem := make(chan struct{}, maxDialsInFlight)
	for {
		var req DialRequest
		files, err := conn.Recv(&req)
		closeFiles(files) // requests carry none
		if err != nil {
			if userns.IsClosed(err) {
				return 0
			}
			if errors.Is(err, userns.ErrMessage) {
				log.Warn("ignoring a request", "err", err)
				continue
			}
			log.Error("control channel", "err", err)
			return 1
		}
		select {
		case sem <- struct{}{}:
		default:
			conn.Send(DialReply{ID: req.ID, Error: "too many connections being opened at once", Errno: int(syscall.EAGAIN)})
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			answerDial(ctx, conn, req, log)
		}()
	}
}

func answerDial(ctx context.Context, conn *userns.Conn, req DialRequest, log *slog.Logger) {
	c, err := dialInside(ctx, req)
	if err != nil {
		log.Debug("connect", "address", req.Address, "err", err)
		reply := DialReply{ID: req.ID, Error: err.Error()}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			reply.Errno = int(errno)
		}
		conn.Send(reply)
		return
	}
	defer c.Close()
	f, err := c.File()
	if err != nil {
		conn.Send(DialReply{ID: req.ID, Error: err.Error()})
		return
	}
	defer f.Close()
	if err := conn.Send(DialReply{ID: req.ID}, f); err != nil {
		log.Debug("passing a connection", "address", req.Address, "err", err)
	}
}

// dialInside connects to a literal address only: a name lookup would read
// the namespace's view of files this helper does not share.
func dialInside(ctx context.Context, req DialRequest) (*net.TCPConn, error) {
	switch req.Network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("unsupported network %q", req.Network)
	}
	ap, err := netip.ParseAddrPort(req.Address)
	if err != nil {
		return nil, fmt.Errorf("address %q: want IP:PORT", req.Address)
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	d := net.Dialer{Timeout: min(timeout, maxDialTimeout)}
	c, err := d.DialContext(ctx, req.Network, ap.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// ---------------------------------------------------------------------
// Parent side.

// Dialer is the parent's handle on the dialer child. DialContext may be
// called from any goroutine.
type Dialer struct {
	conn *userns.Conn
	log  *slog.Logger
	// wait reaps the child; kill ends it.
	wait func() error
	kill func() error
	pid  int

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*pendingDial
	closing bool
	gone    bool

	done      chan struct{} // closed when readReplies returned
	closeOnce sync.Once
}

type pendingDial struct {
	addr netip.AddrPort
	// ch receives exactly one result once the entry left pending.
	ch chan dialResult
}

type dialResult struct {
	c   *net.TCPConn
	err error
}

// DialerOptions says where the dialer runs.
type DialerOptions struct {
	// JoinUser and JoinNet are the container's namespaces; JoinUser is
	// nil when the network namespace's owner is ours already.
	JoinUser, JoinNet *os.File
	// LogLevel is the dialer's (debug, info, warn or error).
	LogLevel string
	Log      *slog.Logger
}

// StartDialer starts the dialer in the given namespaces and waits until
// it serves. Keep the calling goroutine on its thread (LockOSThread) if
// the process is going to execute itself again with the dialer alive:
// the child's parent-death signal follows the thread that started it.
func StartDialer(opts DialerOptions) (*Dialer, error) {
	if opts.JoinNet == nil {
		return nil, errors.New("the port bypass dialer needs a network namespace")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	child, err := userns.Spawn(userns.SpawnOptions{
		Role:        RoleDialer,
		JoinUser:    opts.JoinUser,
		JoinNet:     opts.JoinNet,
		NonDumpable: true,
	})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Dialer, error) {
		child.Conn.Close()
		child.Cmd.Process.Kill()
		werr := child.Wait()
		// A child that died before answering (the channel closed, or a
		// send found no reader: EPIPE) said why on its stderr, which
		// beats "closed" or "broken pipe".
		if s := child.Stderr(); s != "" && werr != nil {
			return nil, fmt.Errorf("port bypass dialer: %s", s)
		}
		if werr != nil && userns.IsClosed(err) {
			return nil, werr
		}
		return nil, fmt.Errorf("talking to the port bypass dialer: %w", err)
	}
	child.Conn.SetDeadline(time.Now().Add(dialerHandshakeTimeout))
	if err := child.Conn.Send(DialerStart{LogLevel: opts.LogLevel}, os.Stderr); err != nil {
		return fail(err)
	}
	var ready DialerReady
	files, err := child.Conn.Recv(&ready)
	closeFiles(files)
	if err != nil {
		return fail(err)
	}
	if ready.Error != "" {
		return fail(errors.New(ready.Error))
	}
	child.Conn.SetDeadline(time.Time{})
	return newDialer(child.Conn, child.Cmd.Process.Pid, child.Wait, child.Cmd.Process.Kill, opts.Log), nil
}

// StartDialer starts a dialer in the command's user and network
// namespaces.
func (c *Container) StartDialer(logLevel string, log *slog.Logger) (*Dialer, error) {
	pid := c.Pid()
	user, err := userns.OpenUserNS(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		return nil, err
	}
	defer user.Close()
	netns, err := userns.OpenNetNS(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	defer netns.Close()
	return StartDialer(DialerOptions{JoinUser: user, JoinNet: netns, LogLevel: logLevel, Log: log})
}

func newDialer(conn *userns.Conn, pid int, wait, kill func() error, log *slog.Logger) *Dialer {
	d := &Dialer{conn: conn, pid: pid, wait: wait, kill: kill, log: log, pending: map[uint64]*pendingDial{}, done: make(chan struct{})}
	go d.readReplies()
	return d
}

// ExecEnv readies the dialer to outlive an execve of this process: its
// channel stays open, and the returned environment entry tells
// AdoptDialer in the new program where it is. Close still works if the
// exec fails.
func (d *Dialer) ExecEnv() (string, error) {
	fd, err := d.conn.KeepOnExec()
	if err != nil {
		return "", fmt.Errorf("port bypass dialer: %w", err)
	}
	return dialerEnv + "=" + strconv.Itoa(fd) + "," + strconv.Itoa(d.pid), nil
}

// AdoptDialer takes over the dialer that the program before the last
// execve passed on with ExecEnv; nil when there is none.
func AdoptDialer(log *slog.Logger) (*Dialer, error) {
	v, ok := os.LookupEnv(dialerEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(dialerEnv)
	if log == nil {
		log = slog.Default()
	}
	fdStr, pidStr, _ := strings.Cut(v, ",")
	fd, err1 := strconv.Atoi(fdStr)
	pid, err2 := strconv.Atoi(pidStr)
	if err1 != nil || err2 != nil || fd < 3 || pid <= 0 {
		return nil, fmt.Errorf("port bypass dialer: bad %s=%q", dialerEnv, v)
	}
	unix.CloseOnExec(fd)
	proc, err := os.FindProcess(pid)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("port bypass dialer: %w", err)
	}
	f := os.NewFile(uintptr(fd), "dialer-control")
	conn, err := userns.FileConn(f)
	f.Close()
	if err != nil {
		// Without its channel it would never end: end it now.
		proc.Kill()
		proc.Wait()
		return nil, fmt.Errorf("port bypass dialer: %w", err)
	}
	wait := func() error { _, err := proc.Wait(); return err }
	return newDialer(conn, pid, wait, proc.Kill, log), nil
}

// readReplies hands each reply to its caller until the channel fails,
// then fails every pending dial.
func (d *Dialer) readReplies() {
	defer close(d.done)
	for {
		var r DialReply
		files, err := d.conn.Recv(&r)
		if err != nil {
			if errors.Is(err, userns.ErrMessage) {
				d.log.Warn("port bypass: ignoring a bad reply from the dialer", "err", err)
				continue
			}
			d.mu.Lock()
			closing := d.closing
			d.gone = true
			pending := d.pending
			d.pending = nil
			d.mu.Unlock()
			if !closing {
				d.log.Error("port bypass: the dialer is gone; published TCP ports now refuse connections", "err", err)
			}
			for _, p := range pending {
				p.ch <- dialResult{err: ErrDialerGone}
			}
			return
		}
		d.mu.Lock()
		p, ok := d.pending[r.ID]
		delete(d.pending, r.ID)
		d.mu.Unlock()
		if !ok {
			// Its caller gave up; nobody will use the connection.
			closeFiles(files)
			continue
		}
		c, err := replyConn(r, files, p.addr)
		p.ch <- dialResult{c: c, err: err}
	}
}

// replyConn turns a reply into a connection, checking what came: one
// connected TCP socket to the address asked for. Every descriptor that
// came is closed on every other outcome.
func replyConn(r DialReply, files []*os.File, want netip.AddrPort) (*net.TCPConn, error) {
	if r.Error != "" {
		closeFiles(files)
		if r.Errno != 0 {
			return nil, &DialError{Msg: r.Error, Errno: syscall.Errno(r.Errno)}
		}
		return nil, errors.New(r.Error)
	}
	if len(files) != 1 {
		closeFiles(files)
		return nil, fmt.Errorf("the dialer sent %d descriptors, want 1", len(files))
	}
	nc, err := net.FileConn(files[0])
	files[0].Close()
	if err != nil {
		return nil, fmt.Errorf("the dialer's connection: %w", err)
	}
	tc, ok := nc.(*net.TCPConn)
	var peer netip.AddrPort
	if ok {
		if ra, isTCP := tc.RemoteAddr().(*net.TCPAddr); isTCP {
			peer = ra.AddrPort()
		}
	}
	if !ok || netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()) != netip.AddrPortFrom(want.Addr().Unmap(), want.Port()) {
		nc.Close()
		return nil, fmt.Errorf("the dialer sent a connection to %v, want %s", peer, want)
	}
	return tc, nil
}

// DialError is a connect that failed inside the namespace.
type DialError struct {
	Msg   string
	Errno syscall.Errno
}

func (e *DialError) Error() string { return e.Msg }

// Unwrap lets errors.Is(err, syscall.ECONNREFUSED) and the like work.
func (e *DialError) Unwrap() error { return e.Errno }

// DialContext connects to address (a literal IP:port) from inside the
// container's network namespace. ctx's deadline, else
// DefaultDialTimeout, bounds the connect.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("port bypass: address %q: want IP:PORT", address)
	}
	timeout := DefaultDialTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	} else {
		// The dialer bounds its connect; this bounds a dialer that hangs.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout+5*time.Second)
		defer cancel()
	}
	p := &pendingDial{addr: ap, ch: make(chan dialResult, 1)}
	d.mu.Lock()
	if d.gone || d.closing {
		d.mu.Unlock()
		return nil, ErrDialerGone
	}
	d.nextID++
	id := d.nextID
	d.pending[id] = p
	d.mu.Unlock()

	if err := d.conn.Send(DialRequest{ID: id, Network: network, Address: ap.String(), Timeout: timeout}); err != nil {
		d.forget(id, p)
		return nil, fmt.Errorf("port bypass: asking the dialer: %w", err)
	}
	select {
	case res := <-p.ch:
		if res.c == nil {
			return nil, res.err
		}
		return res.c, nil
	case <-ctx.Done():
		d.forget(id, p)
		return nil, ctx.Err()
	}
}

// forget withdraws a pending dial; if the reply is already on its way,
// it waits for it (readReplies sends it at once) and closes the
// connection, so that none is left open.
func (d *Dialer) forget(id uint64, p *pendingDial) {
	d.mu.Lock()
	_, still := d.pending[id]
	delete(d.pending, id)
	d.mu.Unlock()
	if still {
		return
	}
	if res := <-p.ch; res.c != nil {
		res.c.Close()
	}
}

// Close ends the dialer: closing the channel makes it exit; after
// dialerExitTimeout it is killed. It is reaped either way. Connections it
// made and passed stay up.
func (d *Dialer) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closing = true
		d.mu.Unlock()
		d.conn.Close()
		<-d.done
		exited := make(chan struct{})
		go func() {
			defer close(exited)
			d.wait()
		}()
		select {
		case <-exited:
		case <-time.After(dialerExitTimeout):
			d.log.Warn("port bypass: the dialer did not exit; killing it", "pid", d.pid)
			d.kill()
			<-exited
		}
	})
	return nil
}

// Pid is the dialer's process id.
func (d *Dialer) Pid() int { return d.pid }

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
