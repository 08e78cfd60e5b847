package portfwd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// TestReadRequestPieces: a request read a byte at a time, or in pieces of
// any size, gets the same verdict as read whole (the reader keeps its
// scanner state across reads instead of re-parsing).
func TestReadRequestPieces(t *testing.T) {
	inputs := []string{
		`{"execute":"list_hostfwd"}`,
		`{"execute":"list_hostfwd"}` + "\r\n",
		`  {"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":2}} `,
		`{"execute":"list_hostfwd"} x`,
		`{"execute":"list_hostfwd",}`,
		`{"execute":"list_hostfwd"`,
		`hello`, ``, `   `, `null`, `[1,2]`, `"s"`, `1 2`, `12`,
		padded(4095), padded(4096), padded(10000), strings.Repeat(" ", 5000), strings.Repeat("[", 3000),
	}
	for _, in := range inputs {
		wantV, wantErr := readRequest(bytes.NewReader([]byte(in)))
		for _, r := range []io.Reader{
			iotest.OneByteReader(strings.NewReader(in)),
			iotest.HalfReader(strings.NewReader(in)),
			iotest.DataErrReader(strings.NewReader(in)),
		} {
			v, err := readRequest(r)
			// A value complete before the end may be answered early in
			// pieces (as with a client that writes slowly); otherwise
			// the verdicts agree.
			if !errors.Is(err, wantErr) && !(err == nil || errors.Is(err, errParse)) {
				t.Errorf("%.40q: in pieces %v, whole %v", in, err, wantErr)
			}
			if wantErr == nil && (err != nil || !bytes.Equal(v, wantV)) {
				t.Errorf("%.40q: in pieces %q, %v; whole %q", in, v, err, wantV)
			}
			if errors.Is(wantErr, errTooLarge) && !errors.Is(err, errTooLarge) {
				t.Errorf("%.40q: in pieces %v, want too large", in, err)
			}
		}
	}
}

// countingReader delivers one byte per Read and counts the Reads.
type countingReader struct {
	data  []byte
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	p[0] = c.data[0]
	c.data = c.data[1:]
	return 1, nil
}

// BenchmarkReadRequestTrickle is the worst case of a client writing one
// byte at a time: linear, not quadratic, in the request's size.
func BenchmarkReadRequestTrickle(b *testing.B) {
	req := []byte(padded(4095))
	for b.Loop() {
		if _, err := readRequest(&countingReader{data: req}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAPIFlood: while a client keeps hundreds of connections open that send
// nothing, or send too much, or trickle, the server holds at most
// maxWaiting of them (the oldest are dropped, not left to the timeout) and
// clients that send their request promptly are all served.
func TestAPIFlood(t *testing.T) {
	// A long timeout: only dropping can free the flood's connections.
	s, path := startServer(t, newFake(), time.Minute)

	const flood = 400
	var (
		mu     sync.Mutex
		conns  []*net.UnixConn
		stop   = make(chan struct{})
		wg     sync.WaitGroup
		served = make(chan error, 64)
	)
	defer func() {
		close(stop)
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	// The flooder: silent connections, oversized requests and tricklers.
	wg.Add(1)
	go func() {
		defer wg.Done()
		big := []byte(strings.Repeat("x", 8000))
		for i := 0; i < flood; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				continue // the backlog is full for a moment
			}
			c.SetDeadline(time.Now().Add(time.Minute))
			switch i % 4 {
			case 1:
				c.Write(big)
			case 2:
				c.Write([]byte(`{"execute":`))
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	// Legitimate clients meanwhile, both styles.
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r string
			var err error
			if i%2 == 0 {
				r, err = rootlesskitDo(path, `{"execute":"list_hostfwd"}`)
			} else {
				r, err = podmanDo(path, `{"execute":"list_hostfwd"}`+"\n")
			}
			if err == nil && r != `{"return":{"entries":[]},"entries":[]}` {
				err = errors.New("reply " + r)
			}
			served <- err
		}()
		time.Sleep(5 * time.Millisecond)
	}
	deadline := time.After(30 * time.Second)
	for i := 0; i < 40; i++ {
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("client during the flood: %v", err)
			}
		case <-deadline:
			t.Fatalf("only %d of 40 clients served during the flood", i)
		}
	}
	// Wait for the flooder, then count what the server still holds.
	for {
		mu.Lock()
		n := len(conns)
		mu.Unlock()
		if n >= flood*9/10 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("flooder opened only %d connections", n)
		case <-time.After(10 * time.Millisecond):
		}
	}
	time.Sleep(200 * time.Millisecond)
	s.mu.Lock()
	held := s.waiting.Len()
	s.mu.Unlock()
	if held > maxWaiting {
		t.Errorf("server waits on %d connections, want at most %d", held, maxWaiting)
	}
	// The oldest flood connections were closed long before the timeout.
	mu.Lock()
	first := conns[0]
	mu.Unlock()
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(first); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Errorf("oldest flood connection: %v, want closed by the server", err)
	}
	// And the server still serves.
	if got := rootlesskitRequest(t, path, `{"execute":"list_hostfwd"}`); got != `{"return":{"entries":[]},"entries":[]}` {
		t.Errorf("after the flood: %s", got)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && strings.Contains(ne.Err.Error(), "reset")
}
