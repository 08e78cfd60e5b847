package fastpath

import (
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// The send side of a flow: the host socket read into the send buffer,
// and segments to the container within its window.

// sendSide is a flow's direction from the host to the container: the
// host socket's reads, the data kept until the container acknowledges
// it, the sequence numbers and window of what goes to the container,
// and retransmission. Its methods run under the flow's mu.
type sendSide struct {
	f        *tcpFlow
	una, nxt uint32
	wnd      uint32 // the container's window from una, in bytes
	shift    uint8  // the container's window scale
	mss      int    // largest segment the container takes
	dupAcks  int
	// buf holds the host's data from una on: sent, then unsent.
	buf sendBuf
	// hostReady: the host socket may have data to read (an edge came
	// and no read found it empty since); hostRDHUP: its peer sent FIN;
	// hostEOF: a read found the end. finSent: our FIN went out.
	hostReady, hostRDHUP, hostEOF bool
	finSent                       bool
	iovs                          [][]byte // scratch
}

// start begins the sequence at iss, with nothing sent.
func (s *sendSide) start(iss uint32) { s.una, s.nxt = iss, iss }

// synSent counts our SYN (or SYN-ACK) as sent; synAcked as acknowledged.
func (s *sendSide) synSent()  { s.nxt = s.una + 1 }
func (s *sendSide) synAcked() { s.una = s.nxt }

// peerWindow takes the window and window scale (< 0: none) of the
// container's SYN or SYN-ACK.
func (s *sendSide) peerWindow(wnd uint16, wscale int) {
	s.wnd = uint32(wnd)
	if wscale >= 0 {
		s.shift = uint8(wscale)
	}
}

func (s *sendSide) setMSS(mss int) { s.mss = mss }

// segSize is the container's MSS, which super-frames are cut to.
func (s *sendSide) segSize() int { return s.mss }

// next is the sequence number of the next new segment.
func (s *sendSide) next() uint32 { return s.nxt }

// unacked says whether the container owes an acknowledgment; waiting
// also whether a closed window holds data back (a probe is due).
func (s *sendSide) unacked() bool { return s.nxt != s.una }
func (s *sendSide) waiting() bool { return s.unacked() || s.f.established() && s.wnd == 0 }

// finAcked says whether our FIN went out and all is acknowledged.
func (s *sendSide) finAcked() bool { return s.finSent && s.una == s.nxt }

// hostEvents takes the host socket's read events; hostReadable says it
// may have data.
func (s *sendSide) hostEvents(events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.hostReady = true
	}
	if events&unix.EPOLLRDHUP != 0 {
		s.hostRDHUP = true
	}
}

func (s *sendSide) hostReadable() { s.hostReady = true }

// readRoom is how much more host data the flow may hold: no more than
// the container's window, which keeps the host peer's pace.
func (s *sendSide) readRoom() int {
	return min(fastSendMax, int(s.wnd)) - s.buf.size
}

// pumpHost reads the host socket into buf while it has data and the
// container's window room, and sends what the window allows.
func (s *sendSide) pumpHost() {
	for s.hostReady && s.f.hostFD() >= 0 && s.f.open() && !s.hostEOF {
		room := s.readRoom()
		if room <= 0 {
			return // an ACK that opens the window calls again
		}
		buf := s.buf.tail(room)
		n, err := eventloop.Read(s.f.hostFD(), buf)
		for err == unix.EINTR {
			n, err = eventloop.Read(s.f.hostFD(), buf)
		}
		if n > 0 && err == nil {
			s.buf.commit(n)
		} else {
			s.buf.unreserve() // an idle flow holds no chunk
		}
		switch {
		case err == unix.EAGAIN:
			s.hostReady = false
			return
		case err != nil:
			s.f.closeLocked(true, true) // the host reset: so does the container
			return
		case n == 0:
			s.hostEOF = true
			s.sendNew()
			s.f.maybeFinishLocked()
			return
		}
		if n < len(buf) && !s.hostRDHUP {
			// A short read emptied the socket: what comes next, data
			// or FIN, brings a new edge. (Without EPOLLRDHUP a FIN
			// that came with the data shows only as the next read's
			// EOF, so that read is made.)
			s.hostReady = false
		}
		s.sendNew()
	}
}

// inFlight is what was sent from buf and not acknowledged.
func (s *sendSide) inFlight() int {
	n := int(s.nxt - s.una)
	if s.finSent && n > 0 {
		n-- // the FIN comes last
	}
	return n
}

// segMax is the largest payload of a segment to the container.
func (s *sendSide) segMax() int {
	if s.f.gso() {
		return fastSegMax
	}
	return s.mss
}

// sendNew sends unsent host data that the window takes, then the FIN
// after the host's EOF.
func (s *sendSide) sendNew() {
	if !s.f.open() {
		return
	}
	segMax := s.segMax()
	for {
		sent := s.inFlight()
		unsent := s.buf.size - sent
		room := int(s.wnd) - sent
		if unsent <= 0 || room <= 0 {
			break
		}
		n := min(unsent, room, segMax)
		s.iovs = s.buf.slices(s.iovs[:0], sent, n)
		s.f.sendLocked(flagACK|flagPSH, s.nxt, s.iovs, n)
		clear(s.iovs)
		s.nxt += uint32(n)
	}
	if s.hostEOF && !s.finSent && s.buf.size == s.inFlight() {
		s.f.sendLocked(flagFIN|flagACK, s.nxt, nil, 0)
		s.nxt++
		s.finSent = true
	}
	s.f.timers.arm()
}

// retransmit sends again the first unacknowledged data, or the FIN.
func (s *sendSide) retransmit() {
	switch {
	case s.inFlight() > 0:
		n := min(s.inFlight(), s.segMax())
		s.iovs = s.buf.slices(s.iovs[:0], 0, n)
		s.f.sendLocked(flagACK|flagPSH, s.una, s.iovs, n)
		clear(s.iovs)
	case s.finSent && s.nxt != s.una:
		s.f.sendLocked(flagFIN|flagACK, s.nxt-1, nil, 0)
	}
}

// probe probes a closed window: an old sequence number gets an ACK
// with the current window.
func (s *sendSide) probe() { s.f.sendLocked(flagACK, s.una-1, nil, 0) }

// reset sends the container a RST.
func (s *sendSide) reset() { s.f.sendLocked(flagRST|flagACK, s.nxt, nil, 0) }

// release drops the data kept.
func (s *sendSide) release() { s.buf.release() }

// ack takes the acknowledgment and window of a segment.
func (s *sendSide) ack(seg *tcpSeg) {
	ack := seg.ack
	if seqLT(ack, s.una) || seqGT(ack, s.nxt) {
		return // old, or acknowledges what was never sent
	}
	wnd := uint32(seg.wnd) << s.shift
	if s.nxt == s.una {
		s.f.timers.alive() // it answers window probes
	}
	if ack == s.una {
		if seg.n == 0 && seg.flags&flagFIN == 0 && wnd == s.wnd && s.nxt != s.una {
			s.dupAcks++
			if s.dupAcks == 3 {
				s.f.retransmitLocked()
			}
		}
		if wnd != s.wnd {
			grew := wnd > s.wnd
			s.wnd = wnd
			if grew {
				s.sendNew()
				s.pumpHost()
			}
		}
		return
	}
	acked := int(ack - s.una)
	if s.f.synAckedLocked() {
		acked-- // our SYN
	}
	if s.finSent && ack == s.nxt {
		acked-- // our FIN
	}
	s.buf.consume(acked)
	s.una = ack
	s.wnd = wnd
	s.dupAcks = 0
	s.f.timers.acked()
	s.sendNew()
	s.pumpHost()
}
