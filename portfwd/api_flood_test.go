package portfwd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
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

// floodEnv names the API socket a TestAPIFloodChild process floods.
const floodEnv = "RLN_API_FLOOD_SOCK"

// TestAPIFloodChild is not a test: run by TestAPIFlood as another process,
// it opens connections to the socket in a loop (silent ones, oversized
// requests, partial requests), about a thousand a second, until its stdin
// closes. (A client that connects faster than the server accepts fills
// the kernel's accept queue, where connect fails with EAGAIN for everyone:
// no server can help that.)
func TestAPIFloodChild(t *testing.T) {
	path := os.Getenv(floodEnv)
	if path == "" {
		t.Skip("only run by TestAPIFlood")
	}
	stop := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	big := []byte(strings.Repeat("x", 8000))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if i == 200 {
			fmt.Println("FLOODING")
		}
		if len(conns) >= 500 { // the flooder's own fd budget
			for _, c := range conns[:250] {
				c.Close()
			}
			conns = append([]net.Conn(nil), conns[250:]...)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			time.Sleep(time.Millisecond)
			continue
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		time.Sleep(time.Millisecond)
		switch i % 4 {
		case 1:
			c.Write(big)
		case 2:
			c.Write([]byte(`{"execute":`))
		}
		conns = append(conns, c)
	}
}

// TestAPIFlood: while another process floods the socket with connections
// that send nothing, too much or half a request, the server waits on at
// most maxWaiting of them, dropping the flooder's own, and every request
// of another client is served.
func TestAPIFlood(t *testing.T) {
	// A long timeout: only dropping can free the flood's connections.
	s, path := startServer(t, newFake(), time.Minute)

	child := exec.Command(os.Args[0], "-test.run=^TestAPIFloodChild$", "-test.count=1")
	child.Env = append(os.Environ(), floodEnv+"="+path)
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		child.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "FLOODING" {
		t.Fatalf("flooder said %q, %v", line, err)
	}

	const clients = 60
	served := make(chan error, clients)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; i < clients; i++ {
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
	for i := 0; i < clients; i++ {
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("client during the flood: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d clients served during the flood", i, clients)
		}
	}
	s.mu.Lock()
	held, flooder, dropped := s.waiting.Len(), s.perPeer[int32(child.Process.Pid)], s.dropped
	s.mu.Unlock()
	t.Logf("the server waits on %d connections, %d of them the flooder's; it dropped %d", held, flooder, dropped)
	if held > maxWaiting {
		t.Errorf("server waits on %d connections, want at most %d", held, maxWaiting)
	}
	if dropped == 0 {
		t.Errorf("the flood never reached the bound: the test tested nothing")
	}
	stdin.Close()
	child.Wait()
	if got := rootlesskitRequest(t, path, `{"execute":"list_hostfwd"}`); got != `{"return":{"entries":[]},"entries":[]}` {
		t.Errorf("after the flood: %s", got)
	}
}
