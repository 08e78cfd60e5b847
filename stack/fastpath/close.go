package fastpath

import "golang.org/x/sys/unix"

// The end of a flow: half-closes both ways and the final close.

// sentAllLocked says whether the container has closed its side and all
// it sent is in the host socket.
func (f *tcpFlow) sentAllLocked() bool {
	return f.guestFIN && f.shutWr && !f.flushing && len(f.pending) == 0
}

func (f *tcpFlow) shutWriteLocked() {
	if !f.shutWr {
		f.shutWr = true
		unix.Shutdown(f.fd, unix.SHUT_WR)
	}
}

// maybeFinishLocked ends a flow closed both ways and acknowledged.
func (f *tcpFlow) maybeFinishLocked() {
	if f.shutWr && f.finSent && f.sndUna == f.sndNxt {
		f.closeLocked(false, false)
	}
}

// closeLocked ends the flow: a reset to the container and an abortive
// close of the host socket on request.
func (f *tcpFlow) closeLocked(rstGuest, rstHost bool) {
	if f.closed {
		return
	}
	f.closed = true
	if f.answered != nil {
		f.answer(errClosed) // a dial still waiting ends now
	}
	if rstGuest && f.state != fsConnecting {
		f.sendLocked(flagRST|flagACK, f.sndNxt, nil, 0)
	}
	if f.state == fsConnecting && f.result != nil {
		f.result(errClosed)
	}
	if f.fd >= 0 {
		f.t.loop.Forget(f.fd) // the flow's fd is the socket's only one
		if rstHost {
			unix.SetsockoptLinger(f.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		}
		unix.Close(f.fd)
		f.fd = -1
	}
	if f.timer != nil {
		f.timer.Stop()
	}
	f.ackTimerOn = false
	f.snd.release()
	f.releasePendingLocked()
	f.t.remove(f)
	if f.ended != nil {
		close(f.ended)
		f.t.loop.HandOff()
	}
	if f.done != nil {
		f.done()
	}
}
