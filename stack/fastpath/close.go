package fastpath

import (
	"context"

	"golang.org/x/sys/unix"
)

// The end of a flow: closed both ways and acknowledged, reset, or given
// up; and the wait of a published flow's carrier for it.

// sentAllLocked says whether the container has closed its side and all
// it sent is in the host socket.
func (f *tcpFlow) sentAllLocked() bool { return f.rcv.sentAll() }

// maybeFinishLocked ends a flow closed both ways and acknowledged.
func (f *tcpFlow) maybeFinishLocked() {
	if f.rcv.shutDone() && f.snd.finAcked() {
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
	f.hs.closing()
	if rstGuest && f.state != fsConnecting {
		f.snd.reset()
	}
	if f.fd >= 0 {
		f.loop.Forget(f.fd) // the flow's fd is the socket's only one
		if rstHost {
			unix.SetsockoptLinger(f.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		}
		unix.Close(f.fd)
		f.fd = -1
	}
	f.timers.stop()
	f.snd.release()
	f.rcv.release()
	f.t.remove(f)
	if f.ended != nil {
		close(f.ended)
		f.runningLoop().HandOff()
	}
	if f.done != nil {
		f.done()
	}
}

// carry waits until the published flow ends, or ctx does, which ends it
// (its host socket closes with it).
func (f *tcpFlow) carry(ctx context.Context) {
	select {
	case <-f.ended:
	case <-ctx.Done():
		f.mu.Lock()
		f.closeLocked(true, true)
		f.mu.Unlock()
	}
}
