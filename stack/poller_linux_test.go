package stack

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pipeHandler counts its events and drains its pipe.
type pipeHandler struct {
	fd     int
	events atomic.Int32
	got    chan uint32
	then   func() // runs on the loop after each event, if set
}

func (h *pipeHandler) onPoll(ev uint32) {
	var b [64]byte
	for {
		if n, err := unix.Read(h.fd, b[:]); err != nil || n == 0 {
			break // EAGAIN, or EOF once the writer closed
		}
	}
	h.events.Add(1)
	if h.then != nil {
		h.then()
	}
	select {
	case h.got <- ev:
	default:
	}
}

// newPipe makes a non-blocking pipe; closeW closes its writer once (the
// cleanup closes what is left).
func newPipe(t *testing.T) (r, w int, closeW func()) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	var wClosed atomic.Bool
	closeW = func() {
		if wClosed.CompareAndSwap(false, true) {
			unix.Close(p[1])
		}
	}
	t.Cleanup(func() { unix.Close(p[0]); closeW() })
	return p[0], p[1], closeW
}

func startPoller(t *testing.T, viaGo bool) *poller {
	t.Helper()
	p, err := newPoller()
	if err != nil {
		t.Fatal(err)
	}
	p.viaGo = viaGo
	go p.run()
	t.Cleanup(func() { p.stop(); p.close() })
	return p
}

// TestPollerDispatch: an fd's events reach its handler, on each new
// edge, until it is removed; an unknown fd and a removed one get nothing.
func TestPollerDispatch(t *testing.T) {
	for _, viaGo := range []bool{false, true} {
		t.Run(fmt.Sprintf("viaGo=%v", viaGo), func(t *testing.T) { testPollerDispatch(t, viaGo) })
	}
}

func testPollerDispatch(t *testing.T, viaGo bool) {
	p := startPoller(t, viaGo)
	r, w, _ := newPipe(t)
	h := &pipeHandler{fd: r, got: make(chan uint32, 16)}
	if err := p.add(r, pollEdge, h); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		unix.Write(w, []byte{1})
		select {
		case ev := <-h.got:
			if ev&unix.EPOLLIN == 0 {
				t.Fatalf("event %#x without EPOLLIN", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("write %d: no event", i)
		}
	}
	p.remove(r)
	before := h.events.Load()
	unix.Write(w, []byte{1})
	time.Sleep(50 * time.Millisecond)
	if n := h.events.Load(); n != before {
		t.Fatalf("%d events after remove", n-before)
	}
	// The writer closing shows as EPOLLHUP on a registered reader.
	r2, _, closeW2 := newPipe(t)
	h2 := &pipeHandler{fd: r2, got: make(chan uint32, 16)}
	if err := p.add(r2, pollEdge, h2); err != nil {
		t.Fatal(err)
	}
	closeW2()
	select {
	case ev := <-h2.got:
		if ev&unix.EPOLLHUP == 0 {
			t.Fatalf("event %#x without EPOLLHUP", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the closed writer")
	}
}

// TestPollerHandOff: a goroutine a handler makes runnable runs while the
// loop is busy (it holds its P in a raw wait), round after round, and the
// loop serves the next event after it. (How soon it runs is the
// benchmark's business: without the yield it waits in the loop's run
// queue until another thread steals it, which this test cannot tell.)
func TestPollerHandOff(t *testing.T) {
	for _, viaGo := range []bool{false, true} {
		t.Run(fmt.Sprintf("viaGo=%v", viaGo), func(t *testing.T) { testPollerHandOff(t, viaGo) })
	}
}

func testPollerHandOff(t *testing.T, viaGo bool) {
	p := startPoller(t, viaGo)
	r, w, _ := newPipe(t)
	ran := make(chan struct{}, 64)
	wake := make(chan struct{})
	go func() {
		for range wake {
			ran <- struct{}{}
		}
	}()
	defer close(wake)
	h := &pipeHandler{fd: r, got: make(chan uint32, 64)}
	h.then = func() {
		wake <- struct{}{}
		p.handedOff.Store(true)
	}
	if err := p.add(r, pollEdge, h); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		unix.Write(w, []byte{1})
		select {
		case <-ran:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the handed-off goroutine did not run", i)
		}
	}
}

// TestPollerStop: stop ends an idle loop and a busy one, and add after
// stop fails.
func TestPollerStop(t *testing.T) {
	for _, c := range []struct{ busy, viaGo bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		busy := c.busy
		p, err := newPoller()
		if err != nil {
			t.Fatal(err)
		}
		p.viaGo = c.viaGo
		done := make(chan struct{})
		go func() { p.run(); close(done) }()
		if busy {
			r, w, _ := newPipe(t)
			h := &pipeHandler{fd: r, got: make(chan uint32, 4)}
			if err := p.add(r, pollEdge, h); err != nil {
				t.Fatal(err)
			}
			unix.Write(w, []byte{1})
			<-h.got
		}
		stopped := make(chan struct{})
		go func() { p.stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatalf("%+v: stop did not return", c)
		}
		<-done
		r, _, _ := newPipe(t)
		if err := p.add(r, pollEdge, &pipeHandler{fd: r}); err != errPollerClosed {
			t.Fatalf("add after stop: %v, want errPollerClosed", err)
		}
		p.close()
	}
}
