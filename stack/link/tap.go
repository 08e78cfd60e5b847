package link

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/stack/eventloop"
)

// tapFD is the TAP fd, out of Go's poller. mu is held shared by each
// write and taken by close, so no write meets a reused number; reads
// are the read loop's, which Close stops before it closes the fd.
type tapFD struct {
	fd int
	mu sync.RWMutex
}

// readv reads one frame into iovs (EAGAIN: none waits). On the read
// loop only.
func (t *tapFD) readv(iovs [][]byte) (int, error) {
	n, err := eventloop.Readv(t.fd, iovs)
	for err == unix.EINTR {
		n, err = eventloop.Readv(t.fd, iovs)
	}
	return n, err
}

// writev writes one frame, or fails at once with EAGAIN when the TAP
// cannot take it: the frame is then dropped, as a NIC drops on a full
// queue. Waiting instead would stall the stack's writer, and with it every
// flow, behind a container that does not read; TCP retransmits what is
// lost.
func (t *tapFD) writev(iovs [][]byte) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.fd < 0 {
		return os.ErrClosed
	}
	for {
		_, err := eventloop.Writev(t.fd, iovs)
		if err != unix.EINTR {
			return err // EAGAIN too: never wait for writability
		}
	}
}

// close closes the fd once the writes under way have ended.
func (t *tapFD) close() {
	t.mu.Lock()
	unix.Close(t.fd)
	t.fd = -1
	t.mu.Unlock()
}
