package fastpath

import (
	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The send side of a flow: the host socket read into the send buffer,
// and segments to the container within its window.

// pumpHostLocked reads the host socket into snd while it has data and
// the container's window room, and sends what the window allows.
func (f *tcpFlow) pumpHostLocked() {
	for f.hostReady && !f.closed && f.fd >= 0 && f.state == fsEstablished && !f.hostEOF {
		room := f.readRoomLocked()
		if room <= 0 {
			return // an ACK that opens the window calls again
		}
		buf := f.snd.tail(room)
		n, err := eventloop.Read(f.fd, buf)
		for err == unix.EINTR {
			n, err = eventloop.Read(f.fd, buf)
		}
		if n > 0 && err == nil {
			f.snd.commit(n)
		} else {
			f.snd.unreserve() // an idle flow holds no chunk
		}
		switch {
		case err == unix.EAGAIN:
			f.hostReady = false
			return
		case err != nil:
			f.closeLocked(true, true) // the host reset: so does the container
			return
		case n == 0:
			f.hostEOF = true
			f.sendNewLocked()
			f.maybeFinishLocked()
			return
		}
		if n < len(buf) && !f.hostRDHUP {
			// A short read emptied the socket: what comes next, data
			// or FIN, brings a new edge. (Without EPOLLRDHUP a FIN
			// that came with the data shows only as the next read's
			// EOF, so that read is made.)
			f.hostReady = false
		}
		f.sendNewLocked()
	}
}

// dataInFlight is what was sent from snd and not acknowledged.
func (f *tcpFlow) dataInFlight() int {
	n := int(f.sndNxt - f.sndUna)
	if f.finSent && n > 0 {
		n-- // the FIN comes last
	}
	return n
}

// sendNewLocked sends unsent host data that the window takes, then the
// FIN after the host's EOF.
func (f *tcpFlow) sendNewLocked() {
	if f.state != fsEstablished || f.closed {
		return
	}
	segMax := f.mss
	if f.t.link.VnetHdr() {
		segMax = fastSegMax
	}
	for {
		sent := f.dataInFlight()
		unsent := f.snd.size - sent
		room := int(f.sndWnd) - sent
		if unsent <= 0 || room <= 0 {
			break
		}
		n := min(unsent, room, segMax)
		f.iovs = f.snd.slices(f.iovs[:0], sent, n)
		f.sendLocked(flagACK|flagPSH, f.sndNxt, f.iovs, n)
		clear(f.iovs)
		f.sndNxt += uint32(n)
	}
	if f.hostEOF && !f.finSent && f.snd.size == f.dataInFlight() {
		f.sendLocked(flagFIN|flagACK, f.sndNxt, nil, 0)
		f.sndNxt++
		f.finSent = true
	}
	f.armLocked()
}

// retransmitLocked sends again the first unacknowledged segment.
func (f *tcpFlow) retransmitLocked() {
	switch {
	case f.state == fsSynAckSent:
		f.sendSynAckLocked()
	case f.state == fsSynSent:
		f.sendLocked(flagSYN, f.iss, nil, 0)
	case f.dataInFlight() > 0:
		segMax := f.mss
		if f.t.link.VnetHdr() {
			segMax = fastSegMax
		}
		n := min(f.dataInFlight(), segMax)
		f.iovs = f.snd.slices(f.iovs[:0], 0, n)
		f.sendLocked(flagACK|flagPSH, f.sndUna, f.iovs, n)
		clear(f.iovs)
	case f.finSent && f.sndNxt != f.sndUna:
		f.sendLocked(flagFIN|flagACK, f.sndNxt-1, nil, 0)
	}
}

// windowField is the window to advertise, in the header's units.
func (f *tcpFlow) windowField() uint16 {
	w := fastPendingMax - len(f.pending)
	if f.wsOK {
		return uint16(min(w>>fastRcvShift, 65535))
	}
	return uint16(min(w, 65535))
}

func (f *tcpFlow) sendAckLocked() { f.sendLocked(flagACK, f.sndNxt, nil, 0) }

func (f *tcpFlow) sendSynAckLocked() { f.sendLocked(flagSYN|flagACK, f.iss, nil, 0) }

// sendLocked writes one segment from seq with the flow's ACK and window:
// n bytes of payload, in pieces.
func (f *tcpFlow) sendLocked(flags header.TCPFlags, seq uint32, payload [][]byte, n int) {
	p := f.t
	vnet := p.link.VnetHdr()
	o := tcpOut{
		srcMAC:  p.mac,
		dstMAC:  f.guestMAC,
		src:     f.key.dst,
		dst:     f.key.src,
		seq:     seq,
		ack:     f.rcvNxt,
		flags:   flags,
		payload: n,
		vnet:    vnet,
		gsoMSS:  f.mss,
		synWS:   -1,
	}
	if flags&flagACK == 0 {
		o.ack = 0
	}
	if flags&flagSYN != 0 {
		// A SYN's window is never scaled.
		o.wnd = uint16(min(fastPendingMax, 65535))
		o.synMSS = f.ourMSS
		if f.wsOK {
			o.synWS = fastRcvShift
		}
	} else {
		o.wnd = f.windowField()
		f.lastWnd = o.wnd
	}
	if flags&flagACK != 0 {
		f.ackOwed = 0
		f.ackTimerOn = false // the loop finds it off
	}

	if o.src.Addr().Is4() {
		o.ipID = uint16(p.ipID.Add(1))
	}
	if !vnet && n > 0 {
		var c checksum.Checksumer
		for _, p := range payload {
			c.Add(p)
		}
		o.sum = c.Checksum()
	}
	hl := buildTCP(f.hdr[:], &o)
	iovs := append(f.wiovs[:0], f.hdr[:hl])
	iovs = append(iovs, payload...)
	// A full TAP drops the frame, as for the stack's frames; the timer
	// sends it again.
	p.link.WritePieces(iovs)
	clear(iovs)
	f.wiovs = iovs[:0]
}
