package eventloop

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

func (h *pipeHandler) OnPoll(ev uint32) {
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

// pollerMode is how a test's loop waits: in its own epoll_wait, with or
// without busy polling, or in Go's poller.
type pollerMode struct {
	viaGo    bool
	busyPoll time.Duration
}

var pollerModes = []pollerMode{{}, {busyPoll: DefaultBusyPoll}, {viaGo: true}}

func (m pollerMode) String() string {
	if m.viaGo {
		return "viaGo"
	}
	return fmt.Sprintf("busyPoll=%v", m.busyPoll)
}

// forEachPollerMode runs test as a subtest in each of pollerModes.
func forEachPollerMode(t *testing.T, test func(*testing.T, pollerMode)) {
	for _, m := range pollerModes {
		t.Run(m.String(), func(t *testing.T) { test(t, m) })
	}
}

func startPoller(t *testing.T, m pollerMode) *Loop {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	p.viaGo = m.viaGo
	p.busyPoll = m.busyPoll
	go p.Run()
	t.Cleanup(func() { p.Stop(); p.Close() })
	return p
}

// TestPollerDispatch: an fd's events reach its handler, on each new
// edge, until it is removed; an unknown fd and a removed one get nothing.
func TestPollerDispatch(t *testing.T) {
	forEachPollerMode(t, testPollerDispatch)
}

func testPollerDispatch(t *testing.T, m pollerMode) {
	p := startPoller(t, m)
	r, w, _ := newPipe(t)
	h := &pipeHandler{fd: r, got: make(chan uint32, 16)}
	if err := p.Add(r, Edge, h); err != nil {
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
	p.Remove(r)
	before := h.events.Load()
	unix.Write(w, []byte{1})
	time.Sleep(50 * time.Millisecond)
	if n := h.events.Load(); n != before {
		t.Fatalf("%d events after remove", n-before)
	}
	// The writer closing shows as EPOLLHUP on a registered reader.
	r2, _, closeW2 := newPipe(t)
	h2 := &pipeHandler{fd: r2, got: make(chan uint32, 16)}
	if err := p.Add(r2, Edge, h2); err != nil {
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
	forEachPollerMode(t, testPollerHandOff)
}

func testPollerHandOff(t *testing.T, m pollerMode) {
	p := startPoller(t, m)
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
	if err := p.Add(r, Edge, h); err != nil {
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
	type stopCase struct {
		busy bool
		pollerMode
	}
	var cases []stopCase
	for _, m := range pollerModes {
		cases = append(cases, stopCase{false, m}, stopCase{true, m})
	}
	for _, c := range cases {
		busy := c.busy
		p, err := New()
		if err != nil {
			t.Fatal(err)
		}
		p.viaGo = c.viaGo
		p.busyPoll = c.busyPoll
		done := make(chan struct{})
		go func() { p.Run(); close(done) }()
		if busy {
			r, w, _ := newPipe(t)
			h := &pipeHandler{fd: r, got: make(chan uint32, 4)}
			if err := p.Add(r, Edge, h); err != nil {
				t.Fatal(err)
			}
			unix.Write(w, []byte{1})
			<-h.got
		}
		stopped := make(chan struct{})
		go func() { p.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatalf("%+v: stop did not return", c)
		}
		<-done
		r, _, _ := newPipe(t)
		if err := p.Add(r, Edge, &pipeHandler{fd: r}); err != ErrClosed {
			t.Fatalf("add after stop: %v, want ErrClosed", err)
		}
		p.Close()
	}
}

// TestPollerBusyPollAdapts: events that follow each other closely open
// the busy-poll window, and events further apart than its ceiling close
// it, so that a link with sparse traffic does not spin.
func TestPollerBusyPollAdapts(t *testing.T) {
	const ceiling = time.Millisecond
	p := startPoller(t, pollerMode{busyPoll: ceiling})
	r, w, _ := newPipe(t)
	h := &pipeHandler{fd: r, got: make(chan uint32, 1)}
	if err := p.Add(r, Edge, h); err != nil {
		t.Fatal(err)
	}
	event := func() {
		t.Helper()
		unix.Write(w, []byte{1})
		select {
		case <-h.got:
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
	}
	// Each event follows the last one's handling by a goroutine switch:
	// well within the ceiling, but a loaded machine may now and then
	// take longer, which halves the window; so a few tries.
	open := false
	for try := 0; try < 5 && !open; try++ {
		for i := 0; i < 200; i++ {
			event()
		}
		open = p.spinLimit.Load() > 0
	}
	if !open {
		t.Fatal("close events did not open the busy-poll window")
	}
	if got := time.Duration(p.spinLimit.Load()); got > ceiling {
		t.Fatalf("window %v above its ceiling %v", got, ceiling)
	}
	// Three times the ceiling apart (a sleep is never shorter), and
	// within busyWait, so that the loop stays busy: each one halves the
	// window, until it is shut. (On a loaded machine the loop may lose
	// its CPU between an event and its next wait, and so see the next
	// event sooner and open the window again: hence not a fixed count.)
	for i := 0; ; i++ {
		if i == 40 {
			t.Fatalf("window %v after %d sparse events, want 0", time.Duration(p.spinLimit.Load()), i)
		}
		time.Sleep(3 * ceiling)
		event()
		if p.spinLimit.Load() == 0 {
			break
		}
	}
}
