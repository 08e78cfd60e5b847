package fastpath

import (
	"sync"
	"time"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"golang.org/x/sys/unix"
)

// The receive side of a flow: segments from the container, their ACKs
// and data, written to the host socket or kept pending while it is full.

// segmentLocked applies a segment from the container; f.pieces holds its
// payload.
func (f *tcpFlow) segmentLocked(s *tcpSeg) {
	if f.closed {
		return
	}
	if f.state == fsSynSent {
		f.synSentLocked(s)
		return
	}
	if s.flags&flagRST != 0 {
		// Accept a reset within the window (RFC 5961 would ask for an
		// exact match; a TAP carries no blind attackers).
		if f.state == fsConnecting || seqLEQ(f.rcvNxt, s.seq) && seqLEQ(s.seq, f.rcvNxt+fastPendingMax) {
			f.closeLocked(false, true)
		}
		return
	}
	if s.flags&flagSYN != 0 {
		switch {
		case s.seq == f.irs:
			if f.state == fsSynAckSent {
				f.sendSynAckLocked() // ours was lost
			}
		case f.state != fsConnecting:
			// A new connection on this 4-tuple while we hold the old
			// one: a challenge ACK (RFC 5961) makes the container
			// reset the old one, and its next SYN starts afresh.
			f.sendAckLocked()
		}
		return
	}
	if f.state == fsConnecting || s.flags&flagACK == 0 {
		return
	}
	f.ackLocked(s)
	if f.closed || f.state != fsEstablished {
		return
	}
	if s.n == 0 && s.flags&flagFIN == 0 {
		f.maybeFinishLocked()
		return
	}
	f.dataLocked(s)
	f.maybeFinishLocked()
}

// ackLocked takes the acknowledgment and window of a segment.
func (f *tcpFlow) ackLocked(s *tcpSeg) {
	ack := s.ack
	if seqLT(ack, f.sndUna) || seqGT(ack, f.sndNxt) {
		return // old, or acknowledges what was never sent
	}
	wnd := uint32(s.wnd) << f.sndShift
	if f.sndNxt == f.sndUna {
		f.retries = 0 // it answers window probes: alive
	}
	if ack == f.sndUna {
		if s.n == 0 && s.flags&flagFIN == 0 && wnd == f.sndWnd && f.sndNxt != f.sndUna {
			f.dupAcks++
			if f.dupAcks == 3 {
				f.retransmitLocked()
			}
		}
		if wnd != f.sndWnd {
			grew := wnd > f.sndWnd
			f.sndWnd = wnd
			if grew {
				f.sendNewLocked()
				f.pumpHostLocked()
			}
		}
		return
	}
	acked := int(ack - f.sndUna)
	if f.state == fsSynAckSent {
		f.state = fsEstablished
		acked-- // our SYN
	}
	if f.finSent && ack == f.sndNxt {
		acked-- // our FIN
	}
	f.snd.consume(acked)
	f.sndUna = ack
	f.sndWnd = wnd
	f.dupAcks = 0
	f.retries = 0
	f.rto = fastRTOMin
	f.restartTimerLocked()
	f.sendNewLocked()
	f.pumpHostLocked()
}

// dataLocked takes the payload and FIN of an acceptable segment and
// acknowledges them.
func (f *tcpFlow) dataLocked(s *tcpSeg) {
	seq, n := s.seq, s.n
	fin := s.flags&flagFIN != 0
	if seqLT(seq, f.rcvNxt) {
		// A retransmission of what we have: keep only what is new.
		skip := int(f.rcvNxt - seq)
		if skip > n || skip == n && (!fin || f.guestFIN) {
			f.sendAckLocked()
			return
		}
		f.pieces = skipPieces(f.pieces, skip)
		seq, n = f.rcvNxt, n-skip
	}
	if seq != f.rcvNxt || f.guestFIN {
		f.sendAckLocked() // out of order: a duplicate ACK
		return
	}
	if n > 0 {
		took, err := f.toHostLocked(n)
		if err != nil {
			f.closeLocked(true, false)
			return
		}
		f.rcvNxt += uint32(took)
		if took < n {
			f.sendAckLocked() // the rest comes again
			return
		}
	}
	if fin {
		f.rcvNxt++
		f.guestFIN = true
		if !f.flushing {
			f.shutWriteLocked()
		}
	}
	f.ackOwed += n
	if fin || f.flushing || f.ackOwed >= fastAckEvery {
		f.sendAckLocked()
		return
	}
	// Delayed: the host's answer, or the next segments, carry it.
	if !f.ackTimerOn {
		f.ackTimerOn = true
		f.ackGen++
		f.t.loop.Later(f, f.ackGen, time.Now().Add(fastAckDelay))
	}
}

// skipPieces drops the first n bytes of pieces.
func skipPieces(pieces [][]byte, n int) [][]byte {
	for len(pieces) > 0 && n >= len(pieces[0]) {
		n -= len(pieces[0])
		pieces = pieces[1:]
	}
	if len(pieces) > 0 {
		pieces[0] = pieces[0][n:]
	}
	return pieces
}

// toHostLocked writes the n bytes of f.pieces to the host socket, and
// keeps what the socket does not take for flushLocked while there is
// room. It returns how many bytes it took.
func (f *tcpFlow) toHostLocked(n int) (int, error) {
	w := 0
	if !f.flushing {
		var err error
		w, err = eventloop.Writev(f.fd, f.pieces)
		for err == unix.EINTR {
			w, err = eventloop.Writev(f.fd, f.pieces)
		}
		switch {
		case err == unix.EAGAIN:
			w = 0
		case err != nil:
			return 0, err
		}
		if w == n {
			return n, nil
		}
		f.pieces = skipPieces(f.pieces, w)
	}
	room := fastPendingMax - len(f.pending)
	want := 0
	for _, p := range f.pieces {
		want += len(p)
	}
	f.reservePendingLocked(min(want, room))
	took := 0
	for _, p := range f.pieces {
		p = p[:min(len(p), room-took)]
		f.pending = append(f.pending, p...)
		took += len(p)
	}
	if took > 0 {
		f.flushing = true // the socket's EPOLLOUT edge flushes
	}
	return w + took, nil
}

// pendingBufs hold the data full host sockets have not taken. A buffer
// per episode, made anew, cost ns->host at MTU 65520 a GC every 6 ms and
// a fifth of its throughput once the GC had a P of its own.
var pendingBufs = sync.Pool{New: func() any { b := make([]byte, 0, fastPendingMax); return &b }}

// reservePendingLocked makes room for n more pending bytes (n fits in
// fastPendingMax with what is pending) without allocating: the pooled
// buffer, its data moved to its start when the tail is short.
func (f *tcpFlow) reservePendingLocked(n int) {
	if f.pendBuf == nil {
		f.pendBuf = pendingBufs.Get().(*[]byte)
		f.pending = (*f.pendBuf)[:0]
	}
	if cap(f.pending)-len(f.pending) < n {
		k := copy((*f.pendBuf)[:cap(*f.pendBuf)], f.pending)
		f.pending = (*f.pendBuf)[:k]
	}
}

// releasePendingLocked drops what is pending and returns the buffer.
func (f *tcpFlow) releasePendingLocked() {
	f.pending = nil
	if f.pendBuf != nil {
		pendingBufs.Put(f.pendBuf)
		f.pendBuf = nil
	}
}

// flushLocked writes the pending data to the host socket until it is all
// written or the socket is full (its next EPOLLOUT edge calls again), and
// then shuts the socket's write side if the container has sent FIN.
func (f *tcpFlow) flushLocked() {
	if f.fd < 0 {
		return
	}
	wrote := false
	defer func() {
		if wrote && !f.closed && f.lastWnd < f.windowField()/2 {
			f.sendAckLocked() // the window reopened
		}
	}()
	for len(f.pending) > 0 {
		n, err := eventloop.Write(f.fd, f.pending)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			f.closeLocked(true, false)
			return
		}
		wrote = true
		f.pending = f.pending[n:]
	}
	f.releasePendingLocked()
	f.flushing = false
	if f.guestFIN {
		f.shutWriteLocked()
		f.maybeFinishLocked()
	}
}
