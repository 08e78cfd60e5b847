package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// helperEnv selects the in-namespace client mode: the benchmark runs a
// copy of its own binary inside the namespace (through nsenter) with this
// variable set and the mode and its arguments as arguments.
const helperEnv = "RNBENCH_HELPER"

// latencyResult, connRateResult and holdResult are what the helper prints
// (one JSON line on stdout).
type latencyResult struct {
	N     int     `json:"n"`
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
}

type connRateResult struct {
	Conns   int     `json:"conns"`
	Seconds float64 `json:"seconds"`
	Err     string  `json:"err,omitempty"`
}

type holdResult struct {
	Held int    `json:"held"`
	Err  string `json:"err,omitempty"`
}

// helperMain is the in-namespace client. Modes:
//
//	latency ADDR N SIZE    N round trips of SIZE bytes on one connection
//	connrate ADDR SECONDS  connect, write 1 byte, read 1 byte, close, for SECONDS
//	hold ADDR N            open N connections, print, hold them until stdin closes
//	echo PORT              an echo server on PORT (all addresses); prints
//	                       "listening", serves until killed
//
// and those of helperClient (udplatency, dnsq, rrpar).
func helperMain(args []string) int {
	raiseNofile()
	if len(args) == 2 && args[0] == "echo" {
		if err := helperEcho(args[1]); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		return 0
	}
	if ok, err := helperClient(args); ok {
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		return 0
	}
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "helper: usage: latency|connrate|hold|udplatency|dnsq|rrpar ADDR ARG... or echo PORT")
		return 2
	}
	var err error
	switch args[0] {
	case "latency":
		if len(args) < 4 {
			err = errors.New("latency ADDR N SIZE")
			break
		}
		n, _ := strconv.Atoi(args[2])
		size, _ := strconv.Atoi(args[3])
		err = helperLatency(args[1], n, size)
	case "connrate":
		secs, _ := strconv.ParseFloat(args[2], 64)
		err = helperConnRate(args[1], time.Duration(secs*float64(time.Second)))
	case "hold":
		n, _ := strconv.Atoi(args[2])
		err = helperHold(args[1], n)
	default:
		err = fmt.Errorf("unknown mode %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

func helperLatency(addr string, n, size int) error {
	r, err := roundTrips(addr, n, size)
	if err != nil {
		return err
	}
	printJSON(r)
	return nil
}

// helperEcho serves echoes on port until the process is killed.
func helperEcho(port string) error {
	s, err := newEchoServer(net.JoinHostPort("", port))
	if err != nil {
		return err
	}
	fmt.Println("listening")
	s.wg.Wait() // until killed: the listener is never closed
	return nil
}

// roundTrips makes n round trips of size bytes on one connection to an
// echo server at addr, after a warm-up.
func roundTrips(addr string, n, size int) (latencyResult, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return latencyResult{}, err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	msg := make([]byte, size)
	buf := make([]byte, size)
	const warmup = 100
	rtts := make([]time.Duration, 0, n)
	for i := 0; i < warmup+n; i++ {
		msg[0] = byte(i)
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return latencyResult{}, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return latencyResult{}, err
		}
		if i >= warmup {
			rtts = append(rtts, time.Since(t0))
		}
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	us := func(q float64) float64 {
		return float64(rtts[int(q*float64(len(rtts)-1))].Nanoseconds()) / 1e3
	}
	return latencyResult{N: len(rtts), P50us: us(0.50), P99us: us(0.99)}, nil
}

// oneShot is one short connection: connect, 1 byte each way, close.
func oneShot(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b := []byte{'x'}
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func helperConnRate(addr string, d time.Duration) error {
	start := time.Now()
	end := start.Add(d)
	n := 0
	var firstErr error
	for time.Now().Before(end) {
		c, err := oneShot(addr)
		if err != nil {
			firstErr = err
			break
		}
		c.Close()
		n++
	}
	res := connRateResult{Conns: n, Seconds: time.Since(start).Seconds()}
	if firstErr != nil {
		res.Err = firstErr.Error()
		if n == 0 {
			return firstErr
		}
	}
	printJSON(res)
	return nil
}

func helperHold(addr string, n int) error {
	const workers = 8
	var (
		mu     sync.Mutex
		conns  []net.Conn
		errMsg string
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	deadline := time.Now().Add(60 * time.Second)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() && int(next.Add(1)) <= n {
				if time.Now().After(deadline) {
					failed.Store(true)
					mu.Lock()
					errMsg = "60 s deadline"
					mu.Unlock()
					return
				}
				c, err := oneShot(addr)
				mu.Lock()
				if err != nil {
					if errMsg == "" {
						errMsg = err.Error()
					}
					failed.Store(true)
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	printJSON(holdResult{Held: len(conns), Err: errMsg})
	// Hold until the benchmark closes stdin (bounded).
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
	}
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// raiseNofile lifts the soft RLIMIT_NOFILE to the hard limit, and, with
// the privilege to, the hard limit to at least 65536; children inherit it.
func raiseNofile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
		return
	}
	if r.Max < 65536 {
		want := syscall.Rlimit{Cur: 65536, Max: 65536}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			return
		}
	}
	r.Cur = r.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
}

// echoServer is the host side of the latency, connection and RSS figures
// (a TCP echo server on 127.0.0.1, a fresh port per session), and the
// namespace's side of the published port's latency.
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newEchoServer(addr string) (*echoServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetNoDelay(true)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
	return s, nil
}

func (s *echoServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *echoServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}
