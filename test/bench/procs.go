package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// proc is a started process that is reaped exactly once, in the
// background; stop ends it within a bounded time.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

var (
	liveMu sync.Mutex
	live   = map[*proc]struct{}{}
	// stopping is set once the benchmark is being torn down: no new
	// process starts.
	stopping atomic.Bool
)

// startProc starts c and registers it so that an interrupted benchmark
// still kills it (killAll).
func startProc(c *exec.Cmd) (*proc, error) {
	c.WaitDelay = 2 * time.Second
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Best effort if the benchmark itself is killed hard.
	c.SysProcAttr.Pdeathsig = syscall.SIGKILL
	liveMu.Lock()
	if stopping.Load() {
		liveMu.Unlock()
		return nil, errors.New("benchmark stopping")
	}
	if err := c.Start(); err != nil {
		liveMu.Unlock()
		return nil, err
	}
	p := &proc{cmd: c, done: make(chan struct{})}
	live[p] = struct{}{}
	liveMu.Unlock()
	go func() {
		p.err = c.Wait()
		liveMu.Lock()
		delete(live, p)
		liveMu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits until the
// process is reaped.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		fmt.Fprintf(os.Stderr, "bench: pid %d not reaped 5s after SIGKILL\n", p.pid())
	}
}

// killAll kills every process still registered (on SIGINT/SIGTERM).
func killAll() {
	stopping.Store(true)
	liveMu.Lock()
	ps := make([]*proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	for _, p := range ps {
		p.cmd.Process.Kill()
	}
	for _, p := range ps {
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
		}
	}
}

// lineReader hands out the lines a process writes to the returned writer
// (to be set as its Stdout); it drains until EOF so the process never
// blocks on a full pipe.
type lineReader struct {
	lines chan string
}

func newLineReader() (*lineReader, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	lr := &lineReader{lines: make(chan string, 64)}
	go func() {
		defer r.Close()
		defer close(lr.lines)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case lr.lines <- sc.Text():
			default: // nobody listens: drop
			}
		}
		io.Copy(io.Discard, r)
	}()
	return lr, w, nil
}

// waitFor returns the first line containing word, or an error after
// timeout or at EOF.
func (lr *lineReader) waitFor(word string, timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	var last string
	for {
		select {
		case l, ok := <-lr.lines:
			if !ok {
				return "", fmt.Errorf("exited before printing %q (last line %q)", word, last)
			}
			if strings.Contains(l, word) {
				return l, nil
			}
			last = l
		case <-deadline:
			return "", fmt.Errorf("no %q within %v (last line %q)", word, timeout, last)
		}
	}
}

// startWithLine starts c and waits until it prints a line containing
// word on stdout.
func startWithLine(c *exec.Cmd, word string, timeout time.Duration) (*proc, *lineReader, error) {
	lr, w, err := newLineReader()
	if err != nil {
		return nil, nil, err
	}
	c.Stdout = w
	p, err := startProc(c)
	w.Close()
	if err != nil {
		return nil, nil, err
	}
	if _, err := lr.waitFor(word, timeout); err != nil {
		p.stop(time.Second)
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(c.Path), err)
	}
	return p, lr, nil
}

// startReadyFD starts c with a ready pipe on fd 3 and waits for a byte.
func startReadyFD(c *exec.Cmd, timeout time.Duration) (*proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	c.ExtraFiles = []*os.File{w}
	p, err := startProc(c)
	w.Close()
	if err != nil {
		return nil, err
	}
	r.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1)
	if _, err := r.Read(buf); err != nil {
		p.stop(time.Second)
		return nil, fmt.Errorf("%s never became ready: %v", filepath.Base(c.Path), err)
	}
	return p, nil
}

// output runs c with a timeout and returns its stdout; stderr's first
// line goes into the error.
func output(timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	return runOutput(ctx, c)
}

func runOutput(ctx context.Context, c *exec.Cmd) ([]byte, error) {
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	p, err := startProc(c)
	if err != nil {
		return nil, err
	}
	<-p.done
	err = p.err
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out (%v)", ctx.Err())
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = firstLine([]byte(stdout.String()))
		}
		return []byte(stdout.String()), fmt.Errorf("%s: %v: %s", filepath.Base(c.Path), err, firstLine([]byte(msg)))
	}
	return []byte(stdout.String()), nil
}

// procTree is pid and all its descendants.
func procTree(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{pid}
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(p)
		if err != nil || len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], p)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// statFields are the fields of /proc/PID/stat after the command name:
// [0] is the state (field 3), [1] ppid, [11] utime, [12] stime.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, errors.New("bad stat")
	}
	return strings.Fields(s[i+1:]), nil
}

// cpuSeconds is utime+stime of pid and its descendants.
func cpuSeconds(pid int) (float64, error) {
	var ticks int64
	for _, p := range procTree(pid) {
		f, err := statFields(p)
		if err != nil {
			if p == pid {
				return 0, err
			}
			continue
		}
		if len(f) < 13 {
			return 0, errors.New("short /proc/PID/stat")
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return float64(ticks) / clockTicks, nil
}

// rssMiB is VmRSS of pid and its descendants, in MiB.
func rssMiB(pid int) (float64, error) {
	var kb int64
	for _, p := range procTree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			if p == pid {
				return 0, err
			}
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 {
					n, _ := strconv.ParseInt(f[0], 10, 64)
					kb += n
				}
			}
		}
	}
	return float64(kb) / 1024, nil
}

// hostListening reports whether something listens on 127.0.0.1:port or
// the wildcard address in the host's network namespace.
func hostListening(port int) bool {
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		want := fmt.Sprintf(":%04X", port)
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], want) {
				return true
			}
		}
	}
	return false
}

func waitHostListening(port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !hostListening(port) {
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on 127.0.0.1:%d after %v", port, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// hostUDPBound reports whether a UDP socket in the host's network
// namespace is bound to port on 127.0.0.1 or the wildcard address (and
// not connected).
func hostUDPBound(port int) bool {
	for _, file := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		want := fmt.Sprintf(":%04X", port)
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) > 3 && strings.HasSuffix(f[1], want) && strings.HasSuffix(f[2], ":0000") {
				return true
			}
		}
	}
	return false
}

func waitHostUDP(port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !hostUDPBound(port) {
		if time.Now().After(deadline) {
			return fmt.Errorf("no UDP socket on 127.0.0.1:%d after %v", port, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
