package fastpath

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// hostWriter writes the container's data to a flow's host socket, and
// keeps what a full socket does not take, at most fastPendingMax bytes,
// until the socket is writable again. It knows nothing of TCP.
type hostWriter struct {
	pending []byte
	buf     *[]byte // pending's pooled array, while data waits
	// waiting says the data waits for the socket to be writable (or to
	// be there at all: a published flow's until its handshake is done).
	waiting bool
}

// pendingBufs hold the data full host sockets have not taken. A buffer
// per episode, made anew, cost ns->host at MTU 65520 a GC every 6 ms and
// a fifth of its throughput once the GC had a P of its own.
var pendingBufs = sync.Pool{New: func() any { b := make([]byte, 0, fastPendingMax); return &b }}

// size is how much is pending.
func (w *hostWriter) size() int { return len(w.pending) }

// empty says whether nothing is pending nor waiting.
func (w *hostWriter) empty() bool { return !w.waiting && len(w.pending) == 0 }

// write writes the n bytes of pieces to fd, and keeps what the socket
// does not take while there is room. It returns how many bytes it took.
func (w *hostWriter) write(fd int, pieces [][]byte, n int) (int, error) {
	wrote := 0
	if !w.waiting {
		var err error
		wrote, err = eventloop.Writev(fd, pieces)
		for err == unix.EINTR {
			wrote, err = eventloop.Writev(fd, pieces)
		}
		switch {
		case err == unix.EAGAIN:
			wrote = 0
		case err != nil:
			return 0, err
		}
		if wrote == n {
			return n, nil
		}
		pieces = skipPieces(pieces, wrote)
	}
	room := fastPendingMax - len(w.pending)
	want := 0
	for _, p := range pieces {
		want += len(p)
	}
	w.reserve(min(want, room))
	took := 0
	for _, p := range pieces {
		p = p[:min(len(p), room-took)]
		w.pending = append(w.pending, p...)
		took += len(p)
	}
	if took > 0 {
		w.waiting = true // the socket's EPOLLOUT edge flushes
	}
	return wrote + took, nil
}

// reserve makes room for n more pending bytes (n fits in fastPendingMax
// with what is pending) without allocating: the pooled buffer, its data
// moved to its start when the tail is short.
func (w *hostWriter) reserve(n int) {
	if w.buf == nil {
		w.buf = pendingBufs.Get().(*[]byte)
		w.pending = (*w.buf)[:0]
	}
	if cap(w.pending)-len(w.pending) < n {
		k := copy((*w.buf)[:cap(*w.buf)], w.pending)
		w.pending = (*w.buf)[:k]
	}
}

// release drops what is pending and returns the buffer.
func (w *hostWriter) release() {
	w.pending = nil
	if w.buf != nil {
		pendingBufs.Put(w.buf)
		w.buf = nil
	}
}

// flush writes the pending data to fd until it is all written (done:
// nothing waits any more) or the socket is full (its next EPOLLOUT edge
// calls again). wrote says whether it wrote anything.
func (w *hostWriter) flush(fd int) (wrote, done bool, err error) {
	for len(w.pending) > 0 {
		n, err := eventloop.Write(fd, w.pending)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return wrote, false, nil
		case err != nil:
			return wrote, false, err
		}
		wrote = true
		w.pending = w.pending[n:]
	}
	w.release()
	w.waiting = false
	return wrote, true, nil
}
