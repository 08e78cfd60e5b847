package forwarder

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testForwarder(t *testing.T) (*Forwarder, *syncBuffer) {
	var logs syncBuffer
	f := New(Config{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	t.Cleanup(f.Close)
	return f, &logs
}

func TestFlowCap(t *testing.T) {
	f, logs := testForwarder(t)
	if got := f.lim.maxFlows(); got != DefaultMaxFlows {
		t.Fatalf("default cap %d, want %d", got, DefaultMaxFlows)
	}
	f.SetMaxFlows(3)
	for i := range 3 {
		if !f.startFlow("tcp") {
			t.Fatalf("flow %d refused under the cap", i)
		}
	}
	// Many refusals at the cap: one warning.
	for range 100 {
		if f.startFlow("udp") {
			t.Fatal("flow beyond the cap accepted")
		}
	}
	if f.Flows() != 3 {
		t.Fatalf("counted %d flows, want 3", f.Flows())
	}
	if n := strings.Count(logs.String(), "flow limit reached"); n != 1 {
		t.Fatalf("%d warnings for one episode, want 1:\n%s", n, logs)
	}
	// Service resumes as soon as a flow ends.
	f.endFlow()
	if !f.startFlow("tcp") {
		t.Fatal("flow refused after one ended")
	}
	// The episode ends once nothing was refused for a while.
	f.lim.capEp.mu.Lock()
	f.lim.capEp.lastRefusal = time.Now().Add(-2 * episodeQuiet)
	f.lim.capEp.mu.Unlock()
	f.endFlow()
	if !strings.Contains(logs.String(), "accepting new flows again") || !strings.Contains(logs.String(), "refused=100") {
		t.Fatalf("no end of episode with its count:\n%s", logs)
	}
	// A second episode warns again, once.
	f.startFlow("tcp")
	f.startFlow("tcp")
	if n := strings.Count(logs.String(), "flow limit reached"); n != 2 {
		t.Fatalf("%d warnings after two episodes, want 2:\n%s", n, logs)
	}
	// No cap.
	f.SetMaxFlows(0)
	for range 10 {
		if !f.startFlow("tcp") {
			t.Fatal("refused without a cap")
		}
	}
}

func TestHostSocketFailed(t *testing.T) {
	f, logs := testForwarder(t)
	emfile := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	for range 50 {
		if !f.hostSocketFailed(emfile) {
			t.Fatal("EMFILE not recognised")
		}
	}
	if f.hostSocketFailed(fmt.Errorf("dial: %w", syscall.ECONNREFUSED)) {
		t.Fatal("ECONNREFUSED taken for fd exhaustion")
	}
	if !f.hostSocketFailed(os.NewSyscallError("socket", syscall.ENFILE)) {
		t.Fatal("ENFILE not recognised")
	}
	if n := strings.Count(logs.String(), "out of file descriptors"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, logs)
	}
	f.hostSocketMade() // too soon: the end is reported a second later
	if strings.Contains(logs.String(), "available again") {
		t.Fatalf("episode ended at once:\n%s", logs)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "available again") {
		if time.Now().After(deadline) {
			t.Fatalf("episode not reported over after a success and a quiet second:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.hostSocketFailed(emfile) // a second episode
	f.hostSocketMade()
	f.lim.fdEp.mu.Lock()
	f.lim.fdEp.lastRefusal = time.Now().Add(-2 * episodeQuiet)
	f.lim.fdEp.mu.Unlock()
	f.hostSocketMade()
	if n := strings.Count(logs.String(), "file descriptors available again"); n != 2 {
		t.Fatalf("%d end lines, want 2:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), "out of file descriptors"); n != 2 {
		t.Fatalf("%d warnings, want 2:\n%s", n, logs)
	}
}
