package e2e

// Load tests: a soak of mixed traffic with rootlessnet's resources (fds,
// RSS, threads) sampled from /proc before, during and after, and many
// concurrent TCP connections through the NAT.
//
// TestSoak runs a short soak by default; RLN_SOAK=MINUTES runs a long one
// (and then also waits for UDP flows to idle out and checks their fds).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/test/world"
)

func init() {
	// soak-traffic TCPECHO LOOPECHO UDPECHO RST DNS SECONDS WORKERS:
	// print READY, wait for GO on stdin, run mixed traffic for SECONDS,
	// print DONE with counts, then wait for stdin's EOF.
	extraHelpers["soak-traffic"] = soakTraffic
	// tcp-many ECHO N: print READY, wait for GO on stdin, hold N
	// concurrent connections to ECHO, each with an echo round trip, print
	// HOLDING, wait for RELEASE on stdin, close them, check that a new
	// connection still works (AFTER ok), then wait for stdin's EOF.
	extraHelpers["tcp-many"] = tcpMany
}

// ---------------------------------------------------------------------
// Container side.

// soakLines delivers stdin's lines; the channel closes at EOF.
func soakLines() <-chan string {
	ch := make(chan string, 4)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

func soakWaitLine(lines <-chan string, want string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return fmt.Errorf("stdin closed while waiting for %q", want)
			}
			if l == want {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no %q on stdin within %v", want, timeout)
		}
	}
}

func soakWaitEOF(lines <-chan string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("stdin still open after %v", timeout)
		}
	}
}

// soakCounts are the outcomes of the mixed traffic.
type soakCounts struct {
	tcpEcho, tcpEchoErr         atomic.Int64
	tcpReset, tcpResetErr       atomic.Int64 // container resets (SetLinger(0)+Close)
	tcpPeerReset, tcpPeerResetE atomic.Int64 // the world resets
	tcpOpenClose, tcpOpenCloseE atomic.Int64
	udp, udpErr, udpFlows       atomic.Int64
	dns, dnsErr                 atomic.Int64
	bytes                       atomic.Int64
	firstErr                    atomic.Pointer[string]
}

func (c *soakCounts) fail(counter *atomic.Int64, what string, err error) {
	counter.Add(1)
	msg := fmt.Sprintf("%s: %v", what, err)
	c.firstErr.CompareAndSwap(nil, &msg)
}

func soakTraffic(args []string) error {
	if len(args) != 7 {
		return errors.New("usage: soak-traffic TCPECHO LOOPECHO UDPECHO RST DNS SECONDS WORKERS")
	}
	tcpEcho, loopEcho, udpEcho, rstAddr, dnsAddr := args[0], args[1], args[2], args[3], args[4]
	secs, err := strconv.ParseFloat(args[5], 64)
	if err != nil {
		return err
	}
	workers, err := strconv.Atoi(args[6])
	if err != nil {
		return err
	}
	lines := soakLines()
	fmt.Println("READY")
	if err := soakWaitLine(lines, "GO", time.Minute); err != nil {
		return err
	}

	var c soakCounts
	stop := time.Now().Add(time.Duration(secs * float64(time.Second)))
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			// A long-lived UDP flow per worker; some operations open new
			// flows instead.
			var udpConn net.Conn
			defer func() {
				if udpConn != nil {
					udpConn.Close()
				}
			}()
			for time.Now().Before(stop) {
				switch p := r.IntN(100); {
				case p < 35:
					addr := tcpEcho
					if p < 8 {
						addr = loopEcho // through the gateway to the world's loopback
					}
					n := 1 + r.IntN(256<<10)
					if err := soakTCPEcho(addr, n); err != nil {
						c.fail(&c.tcpEchoErr, "tcp echo "+addr, err)
					} else {
						c.tcpEcho.Add(1)
						c.bytes.Add(int64(2 * n))
					}
				case p < 50:
					if err := soakTCPReset(tcpEcho, r); err != nil {
						c.fail(&c.tcpResetErr, "tcp reset", err)
					} else {
						c.tcpReset.Add(1)
					}
				case p < 58:
					if err := soakTCPPeerReset(rstAddr); err != nil {
						c.fail(&c.tcpPeerResetE, "tcp peer reset", err)
					} else {
						c.tcpPeerReset.Add(1)
					}
				case p < 65:
					if err := soakTCPOpenClose(tcpEcho); err != nil {
						c.fail(&c.tcpOpenCloseE, "tcp open/close", err)
					} else {
						c.tcpOpenClose.Add(1)
					}
				case p < 85:
					if udpConn == nil || r.IntN(10) == 0 {
						if udpConn != nil {
							udpConn.Close()
						}
						var err error
						if udpConn, err = net.Dial("udp", udpEcho); err != nil {
							c.fail(&c.udpErr, "udp dial", err)
							udpConn = nil
							continue
						}
						c.udpFlows.Add(1)
					}
					if err := soakUDPEcho(udpConn, r); err != nil {
						c.fail(&c.udpErr, "udp echo", err)
					} else {
						c.udp.Add(1)
					}
				default:
					if err := soakDNS(dnsAddr, r.IntN(4) == 0); err != nil {
						c.fail(&c.dnsErr, "dns", err)
					} else {
						c.dns.Add(1)
					}
				}
				time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	// And a connection still works after all that.
	final := "ok"
	if err := soakTCPEcho(tcpEcho, 1<<20); err != nil {
		final = "failed:" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	first := ""
	if p := c.firstErr.Load(); p != nil {
		first = *p
	}
	// Which path carried TCP: the options of one more connection.
	opts := "sack=unknown"
	if oc, err := net.DialTimeout("tcp", tcpEcho, 15*time.Second); err == nil {
		opts = tcpOptions(oc)
		oc.Close()
	}
	fmt.Printf("DONE final=%s %s tcp_echo=%d/%d tcp_reset=%d/%d tcp_peer_reset=%d/%d tcp_open_close=%d/%d udp=%d/%d udp_flows=%d dns=%d/%d bytes=%d first_error=%q\n",
		final, opts, c.tcpEcho.Load(), c.tcpEchoErr.Load(), c.tcpReset.Load(), c.tcpResetErr.Load(),
		c.tcpPeerReset.Load(), c.tcpPeerResetE.Load(), c.tcpOpenClose.Load(), c.tcpOpenCloseE.Load(),
		c.udp.Load(), c.udpErr.Load(), c.udpFlows.Load(), c.dns.Load(), c.dnsErr.Load(), c.bytes.Load(), first)
	return soakWaitEOF(lines, 10*time.Minute)
}

func soakTCPEcho(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 15*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := pattern(n)
	got, werr, err := exchange(c, msg)
	if werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
	return nil
}

// soakTCPReset sends, reads part of the echo, and resets.
func soakTCPReset(addr string, r *rand.Rand) error {
	c, err := net.DialTimeout("tcp", addr, 15*time.Second)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(15 * time.Second))
	msg := pattern(1 + r.IntN(64<<10))
	if _, err := tc.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil {
		return err
	}
	tc.SetLinger(0)
	return nil
}

// soakTCPPeerReset talks to a world server that resets: the reset (or at
// worst an EOF) must arrive, not a hang.
func soakTCPPeerReset(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 15*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	c.Write([]byte("reset me"))
	_, err = io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("no reset arrived")
	}
	return nil
}

func soakTCPOpenClose(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 15*time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

func soakUDPEcho(c net.Conn, r *rand.Rand) error {
	msg := fmt.Appendf(nil, "soak %d %x", r.Uint64(), pattern(r.IntN(1200)))
	buf := make([]byte, 4096)
	for try := 0; try < 3; try++ {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			if bytes.Equal(buf[:n], msg) {
				return nil
			}
			// A late echo of an earlier try: read on.
		}
	}
	return errors.New("no echo after 3 tries")
}

func soakDNS(server string, useTCP bool) error {
	cl := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	if useTCP {
		cl.Net = "tcp"
	}
	q := new(dns.Msg)
	q.SetQuestion(world.DNSName, dns.TypeA)
	var lastErr error
	for try := 0; try < 3; try++ {
		r, _, err := cl.Exchange(q, server)
		if err != nil {
			lastErr = err
			continue
		}
		if len(r.Answer) != 1 {
			return fmt.Errorf("answer %v", r.Answer)
		}
		return nil
	}
	return lastErr
}

// raiseNofile raises the soft RLIMIT_NOFILE to the hard limit and returns
// it.
func raiseNofile() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}

func tcpMany(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: tcp-many ECHO N")
	}
	addr := args[0]
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	limit, err := raiseNofile()
	if err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE: %w", err)
	}
	if limit < uint64(n)+64 {
		return fmt.Errorf("RLIMIT_NOFILE hard limit %d is too low for %d connections", limit, n)
	}
	lines := soakLines()
	fmt.Println("READY")
	if err := soakWaitLine(lines, "GO", time.Minute); err != nil {
		return err
	}

	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	start := time.Now()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []string
		slots    = make(chan struct{}, 128)
		failures atomic.Int64
	)
	for i := range conns {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			c, err := net.DialTimeout("tcp", addr, 30*time.Second)
			if err != nil {
				if failures.Add(1) <= 5 {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("conn %d: dial: %v", i, err))
					mu.Unlock()
				}
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	dialed := time.Since(start)
	if f := failures.Load(); f > 0 {
		return fmt.Errorf("%d of %d connections failed to open (fd limit %d): %s", f, n, limit, strings.Join(errs, "; "))
	}
	// All open at once; now an echo round trip on each, concurrently.
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			msg := fmt.Appendf(nil, "connection %06d", i)
			got := make([]byte, len(msg))
			_, err := c.Write(msg)
			if err == nil {
				_, err = io.ReadFull(c, got)
			}
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("echo %q, want %q", got, msg)
			}
			if err != nil && failures.Add(1) <= 5 {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("conn %d: %v", i, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if f := failures.Load(); f > 0 {
		return fmt.Errorf("%d of %d echo round trips failed: %s", f, n, strings.Join(errs, "; "))
	}
	// One more, with all of them still open.
	if err := soakTCPEcho(addr, 1000); err != nil {
		return fmt.Errorf("connection %d (all others open): %w", n+1, err)
	}
	fmt.Printf("HOLDING %d dialed_in=%v round_trips_in=%v %s\n", n, dialed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), tcpOptions(conns[0]))
	if err := soakWaitLine(lines, "RELEASE", 2*time.Minute); err != nil {
		return err
	}
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	// The stack keeps serving once they are gone.
	if err := soakTCPEcho(addr, 64<<10); err != nil {
		return fmt.Errorf("a new connection after closing %d: %w", n, err)
	}
	fmt.Println("AFTER ok")
	return soakWaitEOF(lines, 2*time.Minute)
}

// ---------------------------------------------------------------------
// Test side.

// soakServer is a minimal TCP server in the world with small buffers (the
// world package's servers keep 64 KiB per connection), tracking its
// goroutines and connections for cleanup.
type soakServer struct {
	l      net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

func startSoakServer(t *testing.T, w *world.World, addr string, handle func(*net.TCPConn)) string {
	t.Helper()
	l, err := w.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s in the world: %v", addr, err)
	}
	s := &soakServer{l: l, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.wg.Add(1)
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		s.mu.Lock()
		s.closed = true
		l.Close()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return l.Addr().String()
}

// smallEcho echoes with a 2 KiB buffer, then half-closes.
func smallEcho(c *net.TCPConn) {
	buf := make([]byte, 2048)
	if _, err := io.CopyBuffer(c, plainConn{c}, buf); err == nil {
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, plainConn{c})
	}
}

// resetAfterRead reads something and resets the connection.
func resetAfterRead(c *net.TCPConn) {
	c.Read(make([]byte, 64))
	c.SetLinger(0)
}

// plainConn hides ReadFrom/WriteTo so that io.Copy uses the buffer.
type plainConn struct{ io.Reader }

// procSample is one look at a process's resources.
type procSample struct {
	fds, tcp, udp, unixSock, otherSock int
	rssKiB, threads                    int
}

func (s procSample) String() string {
	return fmt.Sprintf("fds=%d (tcp=%d udp=%d unix=%d othersock=%d) rss=%.1fMiB threads=%d",
		s.fds, s.tcp, s.udp, s.unixSock, s.otherSock, float64(s.rssKiB)/1024, s.threads)
}

// tcpSocketsOf lists the TCP sockets among pid's descriptors as lines of
// /proc/PID/net/tcp{,6} (addresses, state, inode), to say which flow
// stayed.
func tcpSocketsOf(pid int) string {
	mine := map[string]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if ino, ok := strings.CutPrefix(target, "socket:["); ok {
			mine[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		for i, line := range strings.Split(string(b), "\n") {
			if fields := strings.Fields(line); i > 0 && len(fields) >= 10 && mine[fields[9]] {
				out = append(out, f+": "+strings.TrimSpace(line))
			}
		}
	}
	return strings.Join(out, "\n")
}

// socketInodes reads the inodes listed in /proc/PID/net/FILE.
func socketInodes(pid int, files ...string) map[string]bool {
	m := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for i, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			if i == 0 || len(fields) < 10 {
				continue
			}
			if f == "unix" {
				m[fields[6]] = true
			} else {
				m[fields[9]] = true
			}
		}
	}
	return m
}

func sampleProc(pid int) (procSample, error) {
	var s procSample
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return s, err
	}
	tcp := socketInodes(pid, "tcp", "tcp6")
	udp := socketInodes(pid, "udp", "udp6")
	unixS := socketInodes(pid, "unix")
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		s.fds++
		ino, ok := strings.CutPrefix(target, "socket:[")
		if !ok {
			continue
		}
		ino = strings.TrimSuffix(ino, "]")
		switch {
		case tcp[ino]:
			s.tcp++
		case udp[ino]:
			s.udp++
		case unixS[ino]:
			s.unixSock++
		default:
			s.otherSock++
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.rssKiB, _ = strconv.Atoi(f[0])
		case "Threads":
			s.threads, _ = strconv.Atoi(f[0])
		}
	}
	return s, nil
}

// soakProc is a running `rootlessnet run -- helper` with line-wise
// stdout.
type soakProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	mu     sync.Mutex
	out    bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *soakProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "stdout:\n" + p.out.String() + "stderr:\n" + p.stderr.String()
}

// waitLine waits for a stdout line starting with prefix.
func (p *soakProc) waitLine(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.lines:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-p.done:
			// Lines may still be buffered.
			for {
				select {
				case l := <-p.lines:
					if strings.HasPrefix(l, prefix) {
						return l
					}
				default:
					t.Fatalf("rootlessnet ended (%v) before %q\n%s", p.err, prefix, p.output())
				}
			}
		case <-deadline:
			t.Fatalf("no %q within %v\n%s", prefix, timeout, p.output())
		}
	}
}

// finish closes stdin and wants the helper's OK and status 0.
func (p *soakProc) finish(t *testing.T) {
	t.Helper()
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("rootlessnet did not end 30 s after stdin closed\n%s", p.output())
	}
	if p.err != nil || !strings.Contains(p.output(), "\nOK\n") {
		t.Errorf("rootlessnet run: %v\n%s", p.err, p.output())
	}
}

func mustSample(t *testing.T, pid int) procSample {
	t.Helper()
	s, err := sampleProc(pid)
	if err != nil {
		t.Fatalf("sampling /proc/%d: %v", pid, err)
	}
	return s
}

// soakCount extracts key=ok/err from a DONE line.
func soakCount(line, key string) (ok, failed int) {
	for _, f := range strings.Fields(line) {
		if v, found := strings.CutPrefix(f, key+"="); found {
			a, b, _ := strings.Cut(v, "/")
			ok, _ = strconv.Atoi(a)
			failed, _ = strconv.Atoi(b)
		}
	}
	return ok, failed
}

func TestSoak(t *testing.T) {
	// The fast path's short soak is shorter, to keep the suite's time.
	traffic, fastTraffic, long := 6*time.Second, 3*time.Second, false
	if v := os.Getenv("RLN_SOAK"); v != "" {
		m, err := strconv.ParseFloat(v, 64)
		if err != nil || m <= 0 {
			t.Fatalf("RLN_SOAK=%q: want minutes", v)
		}
		traffic, long = time.Duration(m*float64(time.Minute)), true
		fastTraffic = traffic
	}
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		traffic := traffic
		if isFast(tcp) {
			traffic = fastTraffic
		}
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		loop := e.w.TCPEcho(t, "127.0.0.1:0")
		udp := e.w.UDPEcho(t, "198.51.100.1:0")
		rst := startSoakServer(t, e.w, "198.51.100.1:0", resetAfterRead)
		e.w.DNS(t, "198.51.100.1:53")

		ctx, cancel := context.WithTimeout(context.Background(), traffic+10*time.Minute)
		defer cancel()
		p := e.startRun(t, ctx, 0, tcp, "soak-traffic", echo.String(), fmt.Sprintf("10.0.2.2:%d", loop.Port()), udp.String(), rst,
			"10.0.2.3:53", strconv.FormatFloat(traffic.Seconds(), 'f', -1, 64), "16")
		pid := p.cmd.Process.Pid
		p.waitLine(t, "READY", time.Minute)
		time.Sleep(500 * time.Millisecond) // let start-up settle
		before := mustSample(t, pid)
		t.Logf("before traffic: %v", before)

		start := time.Now()
		if _, err := io.WriteString(p.stdin, "GO\n"); err != nil {
			t.Fatal(err)
		}
		var peak procSample
		var done string
		tick := time.NewTicker(time.Second)
		trafficDeadline := time.After(traffic + 2*time.Minute)
		for done == "" {
			select {
			case l := <-p.lines:
				if strings.HasPrefix(l, "DONE") {
					done = l
				}
			case <-p.done:
				done = p.waitLine(t, "DONE", time.Second)
			case <-tick.C:
				s := mustSample(t, pid)
				if s.fds > peak.fds {
					peak.fds, peak.tcp, peak.udp = s.fds, s.tcp, s.udp
				}
				peak.rssKiB, peak.threads = max(peak.rssKiB, s.rssKiB), max(peak.threads, s.threads)
			case <-trafficDeadline:
				t.Fatalf("traffic did not end\n%s", p.output())
			}
		}
		tick.Stop()
		doneAt := time.Now()
		t.Logf("traffic for %v: %s", doneAt.Sub(start).Round(time.Millisecond), done)
		checkCarrier(t, tcp, done)
		t.Logf("during traffic (peaks): %v", peak)

		// TCP flows are closed: their host sockets must go within seconds.
		// UDP flows keep theirs until the idle timeout (90 s).
		var after procSample
		deadline := time.Now().Add(15 * time.Second)
		for {
			after = mustSample(t, pid)
			if after.tcp <= before.tcp && after.fds-after.udp <= before.fds-before.udp+2 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("15 s after the traffic: %v; before: %v: TCP flows left fds behind:\n%s", after, before, tcpSocketsOf(pid))
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("after traffic (%v after it ended): %v", time.Since(doneAt).Round(time.Millisecond), after)
		if long {
			// UDP flows idle out after 90 s (DNS flows hold no host fd).
			udpDeadline := time.Now().Add(150 * time.Second)
			for {
				after = mustSample(t, pid)
				if after.fds <= before.fds+2 {
					break
				}
				if time.Now().After(udpDeadline) {
					t.Errorf("150 s after the traffic: %v; before: %v: UDP flows left fds behind", after, before)
					break
				}
				time.Sleep(time.Second)
			}
			t.Logf("after the UDP idle timeout (%v after the traffic ended): %v", time.Since(doneAt).Round(time.Second), after)
		}

		// Every operation worked; UDP and DNS are allowed a rare loss.
		for _, k := range []string{"tcp_echo", "tcp_reset", "tcp_peer_reset", "tcp_open_close"} {
			if okN, bad := soakCount(done, k); bad != 0 || okN == 0 {
				t.Errorf("%s: %d ok, %d failed", k, okN, bad)
			}
		}
		for _, k := range []string{"udp", "dns"} {
			if okN, bad := soakCount(done, k); okN == 0 || bad*100 > okN {
				t.Errorf("%s: %d ok, %d failed", k, okN, bad)
			}
		}
		if !strings.Contains(done, " final=ok ") {
			t.Errorf("a connection after the traffic failed: %s", done)
		}
		p.finish(t)
		if strings.Contains(p.output(), "panic") || strings.Contains(p.output(), "DATA RACE") {
			t.Errorf("rootlessnet or the helper reported a panic or race\n%s", p.output())
		}
	})
}

// TestManyTCPConnections holds 1500 connections through the NAT at once,
// each with an echo round trip, and checks that the stack serves a new
// connection while they are open and after they closed.
func TestManyTCPConnections(t *testing.T) {
	const n = 1500
	forEachTCPPath(t, variants, func(t *testing.T, e *env, tcp []string) {
		echo := startSoakServer(t, e.w, "198.51.100.1:0", smallEcho)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		p := e.startRun(t, ctx, 0, tcp, "tcp-many", echo, strconv.Itoa(n))
		pid := p.cmd.Process.Pid
		var lim unix.Rlimit
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err == nil {
			t.Logf("rootlessnet RLIMIT_NOFILE soft=%d hard=%d", lim.Cur, lim.Max)
		}
		p.waitLine(t, "READY", time.Minute)
		time.Sleep(500 * time.Millisecond) // let start-up settle
		before := mustSample(t, pid)
		io.WriteString(p.stdin, "GO\n")
		line := p.waitLine(t, "HOLDING", 3*time.Minute)
		holding := mustSample(t, pid)
		t.Logf("%s", line)
		checkCarrier(t, tcp, line)
		t.Logf("rootlessnet before: %v", before)
		t.Logf("rootlessnet holding %d: %v", n, holding)
		if holding.tcp < n {
			t.Errorf("rootlessnet holds %d TCP sockets while %d connections are open", holding.tcp, n)
		}
		io.WriteString(p.stdin, "RELEASE\n")
		p.waitLine(t, "AFTER ok", time.Minute)
		var after procSample
		deadline := time.Now().Add(15 * time.Second)
		for {
			after = mustSample(t, pid)
			if after.tcp <= before.tcp+1 || time.Now().After(deadline) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("rootlessnet after closing: %v", after)
		if after.tcp > before.tcp+1 {
			t.Errorf("%d TCP sockets left in rootlessnet after all connections closed (before: %d)", after.tcp, before.tcp)
		}
		p.finish(t)
	})
}
