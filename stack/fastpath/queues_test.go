package fastpath

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The fast path on a link of several queues, as a multi-queue TAP's:
// each queue's frames are read by a loop of its own, at the same time.

// outCounts snapshots how many frames of a kind left by each queue.
func outCounts(c []atomic.Uint64) []uint64 {
	s := make([]uint64, len(c))
	for i := range c {
		s[i] = c[i].Load()
	}
	return s
}

// outSince is what left by each queue since the snapshot before.
func outSince(c []atomic.Uint64, before []uint64) []uint64 {
	s := outCounts(c)
	for i := range s {
		s[i] -= before[i]
	}
	return s
}

// TestTCPFastQueues: a flow belongs to the queue that read its SYN and
// writes every frame there (which makes a multi-queue TAP steer the
// container's frames of the flow to that queue); its segments are
// applied whichever queue they come on, a delayed ACK included.
func TestTCPFastQueues(t *testing.T) {
	f := newFastFixtureQueues(t, 2, nil)
	h := f.h

	for q := range 2 {
		t.Run("SYN on queue "+string(rune('0'+q)), func(t *testing.T) {
			before := outCounts(h.tcpOut)
			g := f.sub(t).guest(false, uint16(45000+q))
			g.q, g.ws = q, 7
			_, host := g.connect()
			g.exchange(host, "host", randomBytes(uint64(q), 60000), randomBytes(uint64(q+10), 300000))
			got := outSince(h.tcpOut, before)
			if got[q] == 0 || got[1-q] != 0 {
				t.Errorf("the flow's frames left by the queues %v, want all by queue %d", got, q)
			}
		})
	}

	t.Run("segments on the other queue", func(t *testing.T) {
		// As when the kernel's steering entry for the flow aged out:
		// its frames follow their hash to the other queue.
		before := outCounts(h.tcpOut)
		g := f.sub(t).guest(false, 45010)
		g.q, g.ws = 1, 7
		_, host := g.connect()
		g.q = 0
		// A small segment is acknowledged late (delayed ACK), by the
		// deadline of the loop that applied it.
		g.sendData([]byte("ping"))
		if got := readFull(t, host, 4); string(got) != "ping" {
			t.Fatalf("host read %q, want ping", got)
		}
		g.expect("delayed ACK of ping", func(s rxSeg) bool { return s.ack == g.sndNxt && len(s.payload) == 0 })
		g.exchange(host, "host", randomBytes(20, 60000), randomBytes(21, 200000))
		got := outSince(h.tcpOut, before)
		if got[1] == 0 || got[0] != 0 {
			t.Errorf("the flow's frames left by the queues %v, want all by its own, queue 1", got)
		}
	})
	f.waitFlows(0)
}

// TestDialTCPQueues: published flows take the queues in turn, and each
// writes all its frames on its own; the container's frames of a flow are
// applied whichever queue they come on.
func TestDialTCPQueues(t *testing.T) {
	f := newDialFixtureQueues(t, 2)
	f.teachGuestMAC()
	ctx, cancel := context.WithTimeout(context.Background(), 3*fastWait)
	defer cancel()
	used := make([]bool, 2)
	for i := range 4 {
		client, host := hostPair(t)
		before := outCounts(f.h.tcpOut)
		src := netip.AddrPortFrom(dialClient4.Addr(), uint16(41300+i))
		g, run := f.open(ctx, src, dialGuest4, host)
		g.q = i % 2 // either queue: the flow takes both
		_, done := f.carry(run)
		up := randomBytes(uint64(400+i), 30000)
		g.sendData(up)
		if got := readFull(t, client, len(up)); !bytes.Equal(got, up) {
			t.Fatal("the client got other data than the container sent")
		}
		down := randomBytes(uint64(500+i), 100000)
		client.Write(down)
		client.CloseWrite()
		g.recv(len(down), 1460, true, true)
		if !bytes.Equal(g.stream, down) {
			t.Fatal("the container got other data than the client sent")
		}
		g.fin()
		if _, err := readEnd(t, client); err != io.EOF {
			t.Errorf("the client's end ended with %v, want EOF", err)
		}
		waitDone(t, done, "run's return after both FINs")
		got := outSince(f.h.tcpOut, before)
		if got[0] != 0 && got[1] != 0 {
			t.Errorf("published flow %d: frames left by the queues %v, want all by one", i, got)
		}
		used[0] = used[0] || got[0] > 0
		used[1] = used[1] || got[1] > 0
	}
	if !used[0] || !used[1] {
		t.Errorf("4 published flows used the queues %v, want both", used)
	}
	f.waitFlows(0)
}

// overlapSink is a sink that is not safe for concurrent use, and says so
// when it is used concurrently all the same.
type overlapSink struct {
	inside  atomic.Int32
	overlap atomic.Bool
	n       atomic.Int64
	bytes   int // plain: the race detector sees concurrent calls
	flushes atomic.Int64
}

func (s *overlapSink) enter() {
	if s.inside.Add(1) != 1 {
		s.overlap.Store(true)
	}
}

func (s *overlapSink) Datagram(payload [][]byte, seg int) {
	s.enter()
	defer s.inside.Add(-1)
	for _, p := range payload {
		s.bytes += len(p)
	}
	s.n.Add(1)
}

func (s *overlapSink) Flush() {
	s.enter()
	defer s.inside.Add(-1)
	s.flushes.Add(1)
}

// TestUDPShortcutQueues: a flow's datagrams coming on two queues at once
// reach its sink one call at a time, all of them; and WriteUDP writes
// each flow's datagrams on one queue, spreading flows over the queues.
func TestUDPShortcutQueues(t *testing.T) {
	h := newFrameHarnessWith(t, frameHarnessOptions{queues: 2})
	world4 := []byte{198, 51, 100, 1}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(fzGuest4)), 4000)
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(world4)), 7000)
	sink := &overlapSink{}
	defer h.fast.AddUDPFlow(src, dst, sink)()

	const each = 2000
	payload := bytes.Repeat([]byte{7}, 100)
	frame := toGateway4(ipv4Packet(fzGuest4, world4, 17, nil, udpDatagram(4000, 7000, payload), 6))
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for q := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				h.peers[q].SetWriteDeadline(time.Now().Add(fzAliveTimeout))
				if _, err := h.peers[q].Write(frame); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("sending as the container: %v", err)
	}
	deadline := time.Now().Add(fzAliveTimeout)
	for sink.n.Load() != 2*each {
		if time.Now().After(deadline) {
			t.Fatalf("the sink got %d datagrams, want %d", sink.n.Load(), 2*each)
		}
		time.Sleep(time.Millisecond)
	}
	if sink.overlap.Load() {
		t.Error("the sink was called by two loops at once")
	}
	if sink.bytes != 2*each*len(payload) {
		t.Errorf("the sink got %d bytes, want %d", sink.bytes, 2*each*len(payload))
	}
	for sink.flushes.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the sink was never flushed")
		}
		time.Sleep(time.Millisecond)
	}

	// The other way: each flow's datagrams leave by one queue.
	waitGuestMAC(t, h)
	used := make([]bool, 2)
	for i := range 16 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(world4)), uint16(9000+i))
		before := outCounts(h.udpOut)
		for range 3 {
			if !h.fast.WriteUDP(from, src, payload) {
				t.Fatal("WriteUDP refused a datagram")
			}
		}
		deadline := time.Now().Add(fzAliveTimeout)
		got := outSince(h.udpOut, before)
		for ; got[0]+got[1] < 3; got = outSince(h.udpOut, before) {
			if time.Now().After(deadline) {
				t.Fatalf("flow %d: %v datagrams left by the queues, want 3", i, got)
			}
			time.Sleep(time.Millisecond)
		}
		if got[0] != 0 && got[1] != 0 {
			t.Errorf("flow %d: datagrams left by the queues %v, want all by one", i, got)
		}
		used[0] = used[0] || got[0] > 0
		used[1] = used[1] || got[1] > 0
	}
	if !used[0] || !used[1] {
		t.Errorf("16 flows used the queues %v, want both", used)
	}
}

// waitGuestMAC has the link learn the container's MAC.
func waitGuestMAC(t *testing.T, h *frameHarness) {
	t.Helper()
	h.send(t, arpFrame(fzBroadcast, fzGuestMAC, 1, fzGuestMAC, fzGuest4, make([]byte, 6), fzGateway4))
	deadline := time.Now().Add(fzAliveTimeout)
	for mac, ok := h.link.GuestMAC(); !ok || string(mac) != string(fzGuestMAC); mac, ok = h.link.GuestMAC() {
		if time.Now().After(deadline) {
			t.Fatal("the link never learned the container's MAC")
		}
		time.Sleep(time.Millisecond)
	}
}
