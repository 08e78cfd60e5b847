package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Stream is TCP without the intermediate copy: data from the container
// goes from the netstack's segments straight into the host socket's
// write, and data from the host is read straight into the netstack's
// send buffer. With gonet and a copy buffer each byte was copied once
// more in user space (memmove was 15% of the CPU of a bulk transfer).
//
// It copies both ways until both directions ended, then closes both
// sides. A FIN is passed on as a half-close; an error on either side (a
// reset) resets the other. Cancelling ctx resets both. wq is ep's waiter
// queue.
func Stream(ctx context.Context, ep tcpip.Endpoint, wq *waiter.Queue, host *net.TCPConn) error {
	raw, err := host.SyscallConn()
	if err != nil {
		ep.Abort()
		host.Close()
		return err
	}
	var (
		resetOnce sync.Once
		firstErr  error
	)
	reset := func(err error) {
		resetOnce.Do(func() {
			firstErr = err
			ep.Abort()
			host.SetLinger(0)
			host.Close()
		})
	}
	stop := context.AfterFunc(ctx, func() { reset(ctx.Err()) })
	defer stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := guestToHost(ep, wq, raw); err != nil {
			reset(err)
			return
		}
		host.CloseWrite()
	}()
	if err := hostToGuest(raw, ep, wq); err != nil {
		reset(err)
	} else {
		ep.Shutdown(tcpip.ShutdownWrite)
	}
	wg.Wait()
	ep.Close()
	host.Close()
	return firstErr
}

// errConnectionReset stands for a reset seen on the netstack side.
var errConnectionReset = errors.New("connection reset")

// guestToHost moves the container's bytes to the host socket until the
// container's FIN (nil) or an error.
func guestToHost(ep tcpip.Endpoint, wq *waiter.Queue, raw syscall.RawConn) error {
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	w := hostWriter{raw: raw}
	defer w.release()
	for {
		res, terr := ep.Read(&w, tcpip.ReadOptions{})
		if res.Count > 0 {
			ep.ModerateRecvBuf(res.Count)
		}
		if w.err != nil {
			return w.err
		}
		if err := w.flush(); err != nil {
			return err
		}
		switch terr.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			<-readable
		case *tcpip.ErrClosedForReceive:
			return nil
		default:
			return fmt.Errorf("%w: %s", errConnectionReset, terr)
		}
	}
}

// Small views are gathered into one write; large ones (TCP super-frames)
// are written from the netstack's own memory.
const (
	directWriteMin = 16 << 10
	pendingSize    = 64 << 10
)

var pendingBuffers = sync.Pool{New: func() any { b := make([]byte, 0, pendingSize); return &b }}

// hostWriter is the io.Writer the netstack's Read copies segments into.
// It never waits: what the socket does not take at once is kept in
// pending (so every view offered is consumed whole, or refused whole once
// the socket is full), and written by flush, which may wait.
type hostWriter struct {
	raw     syscall.RawConn
	iovs    [][]byte
	pending []byte
	backing *[]byte
	// blocked: the socket took less than it was offered; refuse the
	// rest of this Read.
	blocked bool
	err     error
}

// errHostFull ends a netstack Read once the host socket is full.
var errHostFull = errors.New("host socket full")

func (w *hostWriter) Write(p []byte) (int, error) {
	if w.blocked || w.err != nil {
		return 0, errHostFull
	}
	if len(p) < directWriteMin && len(w.pending)+len(p) <= pendingSize {
		w.keep(p)
		return len(p), nil
	}
	if len(p) < directWriteMin {
		// pending is full: make room.
		n, err := w.write(w.pending)
		w.drop(n)
		if err != nil || len(w.pending) > 0 {
			// The socket is full (or failed): this view waits.
			return 0, errHostFull
		}
		w.keep(p)
		return len(p), nil
	}
	// A large view goes out with what is pending in one writev (a
	// super-frame's first bytes come in a view of their own: see
	// link.Endpoint's receive buffers).
	n, err := w.write(w.pending, p)
	if err != nil {
		return 0, errHostFull
	}
	if n < len(w.pending) {
		w.drop(n)
		w.blocked = true
		return 0, errHostFull
	}
	n -= len(w.pending)
	w.pending = w.pending[:0]
	if n < len(p) {
		w.keep(p[n:])
		w.blocked = true
	}
	return len(p), nil
}

// drop removes the first n bytes of pending, which the socket took.
func (w *hostWriter) drop(n int) {
	w.pending = w.pending[:copy(w.pending, w.pending[n:])]
}

// keep appends p to pending.
func (w *hostWriter) keep(p []byte) {
	if w.backing == nil {
		w.backing = pendingBuffers.Get().(*[]byte)
		w.pending = (*w.backing)[:0]
	}
	w.pending = append(w.pending, p...)
}

// write makes one non-blocking write of bufs (empty ones skipped); EAGAIN
// is a short write, any other error is kept in w.err.
func (w *hostWriter) write(bufs ...[]byte) (int, error) {
	iovs := w.iovs[:0]
	for _, b := range bufs {
		if len(b) > 0 {
			iovs = append(iovs, b)
		}
	}
	var n int
	var werr error
	err := w.raw.Write(func(fd uintptr) bool {
		for {
			n, werr = unix.Writev(int(fd), iovs)
			if werr != unix.EINTR {
				return true
			}
		}
	})
	clear(iovs) // no stale references into the netstack's chunks
	w.iovs = iovs[:0]
	if err == nil {
		err = werr
	}
	if n < 0 {
		n = 0
	}
	if errors.Is(err, unix.EAGAIN) {
		w.blocked = true
		return n, nil
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

// flush writes what is pending, waiting for the socket as long as needed,
// and gives the buffer back.
func (w *hostWriter) flush() error {
	w.blocked = false
	if len(w.pending) > 0 {
		var werr error
		err := w.raw.Write(func(fd uintptr) bool {
			for len(w.pending) > 0 {
				n, err := unix.Write(int(fd), w.pending)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					return false
				case err != nil:
					werr = err
					return true
				}
				w.drop(n)
			}
			return true
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			w.err = err
			return err
		}
	}
	w.release()
	return nil
}

func (w *hostWriter) release() {
	if w.backing != nil {
		*w.backing = w.pending[:0]
		pendingBuffers.Put(w.backing)
		w.backing, w.pending = nil, nil
	}
}

// A host read starts small: a request or a reply of a few bytes goes
// through one read into smallRead and one copy into the netstack, as with
// a plain copy loop. A read that fills it means a stream is flowing: the
// rest is then read straight into the netstack's buffers, sized by what
// the socket holds (SIOCINQ), until the socket runs dry.
const (
	smallRead = 2 << 10
	// maxPayload bounds one hand-over from the host socket to the
	// netstack.
	maxPayload = 4 << 20
)

// hostToGuest moves the host's bytes into the netstack until the host's
// FIN (nil) or an error.
func hostToGuest(raw syscall.RawConn, ep tcpip.Endpoint, wq *waiter.Queue) error {
	entry, writable := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	var (
		small = make([]byte, smallRead)
		// pend holds bytes read from the host that the netstack has
		// not taken yet.
		pend []byte
		// bulk: the last read filled small; read straight into the
		// netstack next.
		bulk bool
		src  socketPayload
		r    bytes.Reader
	)
	for {
		if len(pend) > 0 {
			r.Reset(pend)
			n, terr := ep.Write(&r, tcpip.WriteOptions{})
			pend = pend[n:]
			if err := waitWritable(terr, writable); err != nil {
				return err
			}
			continue
		}
		var (
			eof  bool
			terr tcpip.Error
			n    int64
		)
		src.reset()
		err := raw.Read(func(fd uintptr) bool {
			if bulk {
				queued, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
				if err != nil {
					src.err = err
					return true
				}
				if queued > 0 {
					src.fd, src.len = int(fd), min(queued, maxPayload)
					n, terr = ep.Write(&src, tcpip.WriteOptions{})
					return true
				}
				bulk = false
			}
			for {
				m, err := unix.Read(int(fd), small)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					return false
				case err != nil:
					src.err = err
				case m == 0:
					eof = true
				default:
					pend = small[:m]
					bulk = m == len(small)
				}
				return true
			}
		})
		switch {
		case err != nil:
			return err
		case src.err != nil:
			return src.err
		case eof:
			return nil
		}
		if n != src.read {
			// Bytes taken from the socket but not queued would be lost.
			return fmt.Errorf("netstack queued %d of %d bytes read from the host", n, src.read)
		}
		if err := waitWritable(terr, writable); err != nil {
			return err
		}
	}
}

// waitWritable handles the result of an Endpoint.Write: a full send
// buffer waits for room (what was not taken stays with the caller or in
// the socket), anything else but success is the connection's end.
func waitWritable(terr tcpip.Error, writable <-chan struct{}) error {
	switch terr.(type) {
	case nil:
	case *tcpip.ErrWouldBlock:
		<-writable
	default:
		return fmt.Errorf("%w: %s", errConnectionReset, terr)
	}
	return nil
}

// socketPayload is a tcpip.Payloader reading a host socket without
// waiting: the netstack reads into its own buffers what the socket holds.
type socketPayload struct {
	fd   int
	len  int
	read int64
	err  error
}

func (p *socketPayload) reset() { *p = socketPayload{} }

// Len implements tcpip.Payloader: the bytes queued on the socket.
func (p *socketPayload) Len() int { return p.len }

// Read implements io.Reader; io.EOF ends the hand-over when the socket
// has nothing more right now.
func (p *socketPayload) Read(b []byte) (int, error) {
	if len(b) == 0 {
		// View.ReadFrom probes for EOF with an empty read.
		return 0, nil
	}
	for {
		n, err := unix.Read(p.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, io.EOF
		case err != nil:
			p.err = err
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		p.read += int64(n)
		return n, nil
	}
}
