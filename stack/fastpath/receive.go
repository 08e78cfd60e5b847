package fastpath

import (
	"time"

	"golang.org/x/sys/unix"
)

// The receive side of a flow: segments from the container, their data
// written to the host socket (or kept by hostWriter while it is full),
// and their ACKs, delayed while a segment of ours may carry them.

// recvSide is a flow's direction from the container to the host: the
// sequence expected next, the window and MSS offered, the container's
// FIN and the host socket's write side, and the ACKs owed. Its methods
// run under the flow's mu.
type recvSide struct {
	f       *tcpFlow
	nxt     uint32
	mss     uint16 // the MSS offered: the largest segment we take
	scaled  bool   // window scaling on: both sides offered it
	lastWnd uint16 // the window field last sent
	fin     bool   // FIN from the container
	shutWr  bool   // the host socket shut for writing
	// pend keeps the container's data the host socket has not taken.
	pend hostWriter
	// ackOwed counts the bytes taken since the last ACK sent; the
	// loop sends the ACK that no segment of ours carried in time
	// (ackTimerOn, for the request numbered ackGen).
	ackOwed    int
	ackTimerOn bool
	ackGen     uint32
	// pieces is the payload of the segment being applied.
	pieces [][]byte
}

// start expects the container's data after its SYN at seq.
func (r *recvSide) start(seq uint32) { r.nxt = seq + 1 }

// scaleWindow turns window scaling on or off, as the SYNs agreed.
func (r *recvSide) scaleWindow(on bool) { r.scaled = on }

func (r *recvSide) ourMSS() int { return int(r.mss) }

// inWindow says whether seq lies in the window offered.
func (r *recvSide) inWindow(seq uint32) bool {
	return seqLEQ(r.nxt, seq) && seqLEQ(seq, r.nxt+fastPendingMax)
}

// takePayload holds the payload of seg, read as hdr then rest, while it
// is applied; dropPayload lets it go.
func (r *recvSide) takePayload(hdr, rest []byte, seg *tcpSeg) {
	r.pieces = framePieces(r.pieces[:0], hdr, rest, seg.off, seg.n)
}

func (r *recvSide) dropPayload() { clear(r.pieces) }

// window is the window to advertise, in the header's units.
func (r *recvSide) window() uint16 {
	w := fastPendingMax - r.pend.size()
	if r.scaled {
		return uint16(min(w>>fastRcvShift, 65535))
	}
	return uint16(min(w, 65535))
}

// advertise is the window field of a segment other than SYN, noted.
func (r *recvSide) advertise() uint16 {
	r.lastWnd = r.window()
	return r.lastWnd
}

// synOffer is what a SYN of ours offers: its window (never scaled), MSS
// and window scale (< 0: none).
func (r *recvSide) synOffer() (wnd, mss uint16, ws int) {
	ws = -1
	if r.scaled {
		ws = fastRcvShift
	}
	return uint16(min(fastPendingMax, 65535)), r.mss, ws
}

// acking is the ACK field of a segment about to go, which pays the ACK
// owed.
func (r *recvSide) acking() uint32 {
	r.ackOwed = 0
	r.ackTimerOn = false // the loop finds it off
	return r.nxt
}

// data takes the payload and FIN of an acceptable segment and
// acknowledges them.
func (r *recvSide) data(s *tcpSeg) {
	f := r.f
	seq, n := s.seq, s.n
	fin := s.flags&flagFIN != 0
	if seqLT(seq, r.nxt) {
		// A retransmission of what we have: keep only what is new.
		skip := int(r.nxt - seq)
		if skip > n || skip == n && (!fin || r.fin) {
			f.sendAckLocked()
			return
		}
		r.pieces = skipPieces(r.pieces, skip)
		seq, n = r.nxt, n-skip
	}
	if seq != r.nxt || r.fin {
		f.sendAckLocked() // out of order: a duplicate ACK
		return
	}
	if n > 0 {
		took, err := r.pend.write(f.hostFD(), r.pieces, n)
		if err != nil {
			f.closeLocked(true, false)
			return
		}
		r.nxt += uint32(took)
		if took < n {
			f.sendAckLocked() // the rest comes again
			return
		}
	}
	if fin {
		r.nxt++
		r.fin = true
		if !r.pend.waiting {
			r.shutWrite()
		}
	}
	r.ackOwed += n
	if fin || r.pend.waiting || r.ackOwed >= fastAckEvery {
		f.sendAckLocked()
		return
	}
	// Delayed: the host's answer, or the next segments, carry it.
	if !r.ackTimerOn {
		r.ackTimerOn = true
		r.ackGen++
		// On the loop applying the segment, which may be another
		// queue's than the flow's: a loop's deadlines are its own.
		f.runningLoop().Later(r, r.ackGen, time.Now().Add(fastAckDelay))
	}
}

// Due sends a delayed ACK that no segment carried (request gen): the
// loop's eventloop.Waiter.
func (r *recvSide) Due(gen uint32) {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	if r.f.isClosed() || !r.ackTimerOn || gen != r.ackGen {
		return
	}
	r.ackTimerOn = false
	if r.ackOwed > 0 {
		r.f.sendAckLocked()
	}
}

// Wanted says whether request gen of a delayed ACK still stands.
func (r *recvSide) Wanted(gen uint32) bool {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return !r.f.isClosed() && r.ackTimerOn && gen == r.ackGen
}

// hostWritable flushes what waits for the host socket to be writable.
func (r *recvSide) hostWritable() {
	if r.pend.waiting {
		r.flush()
	}
}

// flush writes the pending data to the host socket, and then shuts the
// socket's write side if the container has sent FIN; an ACK says when
// the window reopened.
func (r *recvSide) flush() {
	f := r.f
	if f.hostFD() < 0 {
		return
	}
	wrote, done, err := r.pend.flush(f.hostFD())
	if err != nil {
		f.closeLocked(true, false)
		return
	}
	if done && r.fin {
		r.shutWrite()
		f.maybeFinishLocked()
	}
	if wrote && !f.isClosed() && r.lastWnd < r.window()/2 {
		f.sendAckLocked() // the window reopened
	}
}

func (r *recvSide) shutWrite() {
	if !r.shutWr {
		r.shutWr = true
		unix.Shutdown(r.f.hostFD(), unix.SHUT_WR)
	}
}

// shutDone says whether the host socket is shut for writing.
func (r *recvSide) shutDone() bool { return r.shutWr }

// sentAll says whether the container has closed its side and all it
// sent is in the host socket.
func (r *recvSide) sentAll() bool { return r.fin && r.shutWr && r.pend.empty() }

// release drops what is pending and the delayed ACK.
func (r *recvSide) release() {
	r.ackTimerOn = false
	r.pend.release()
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
