package fastpath

import "sync"

// sendBuf holds what a fast-path flow read from its host socket and the
// container has not acknowledged yet, in pooled 64 KiB chunks: the host
// socket is read straight into it and frames are written from it, so each
// byte is copied once each way, and a flow with nothing in flight holds
// no chunk (1500 idle connections cost no buffer memory).
type sendBuf struct {
	// chunks keeps its backing array when empty, and the pool's
	// pointers: a flow that goes idle after each answer allocated twice
	// per round trip when both were made anew.
	chunks []*[sendChunk]byte
	// head is where the first byte lies in chunks[0]; size counts bytes.
	head, size int
	// reserved: tail handed out a region that commit has not closed.
	reserved bool
}

const sendChunk = 64 << 10

var sendChunks = sync.Pool{New: func() any { return new([sendChunk]byte) }}

// tail returns the free room after the data, up to max bytes, and adds a
// chunk when the last is full. The region stays the caller's until commit
// or unreserve.
func (b *sendBuf) tail(max int) []byte {
	end := b.head + b.size
	if end == len(b.chunks)*sendChunk {
		b.chunks = append(b.chunks, sendChunks.Get().(*[sendChunk]byte))
	}
	b.reserved = true
	free := b.chunks[len(b.chunks)-1][end%sendChunk:]
	if len(free) > max {
		free = free[:max]
	}
	return free
}

// commit adds n bytes written into the region tail returned.
func (b *sendBuf) commit(n int) {
	b.reserved = false
	b.size += n
	b.trim()
}

// unreserve gives back the region tail returned, unused.
func (b *sendBuf) unreserve() { b.commit(0) }

// consume drops the first n bytes.
func (b *sendBuf) consume(n int) {
	b.head += n
	b.size -= n
	b.trim()
}

// trim returns chunks that hold nothing any more.
func (b *sendBuf) trim() {
	for len(b.chunks) > 0 && (b.head >= sendChunk || b.size == 0 && !b.reserved) {
		sendChunks.Put(b.chunks[0])
		last := len(b.chunks) - 1
		copy(b.chunks, b.chunks[1:])
		b.chunks[last] = nil
		b.chunks = b.chunks[:last]
		if b.head >= sendChunk {
			b.head -= sendChunk
		} else {
			b.head = 0
		}
	}
	if len(b.chunks) == 0 {
		b.head = 0
	}
}

// slices appends to dst the pieces of bytes [off, off+n) of the data.
func (b *sendBuf) slices(dst [][]byte, off, n int) [][]byte {
	pos := b.head + off
	for n > 0 {
		c := b.chunks[pos/sendChunk][pos%sendChunk:]
		if len(c) > n {
			c = c[:n]
		}
		dst = append(dst, c)
		pos += len(c)
		n -= len(c)
	}
	return dst
}

// release drops the data and returns every chunk but a reserved one,
// which unreserve returns.
func (b *sendBuf) release() { b.consume(b.size) }
