package fastpath

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// checkSendBuf compares b with model, the bytes it should hold, and
// checks that it holds no chunk beyond those its data (and a reserved
// tail) needs.
func checkSendBuf(t *testing.T, b *sendBuf, model []byte, step int) {
	t.Helper()
	if b.size != len(model) {
		t.Fatalf("step %d: size %d, want %d", step, b.size, len(model))
	}
	if b.head < 0 || b.head >= sendChunk {
		t.Fatalf("step %d: head %d outside the first chunk", step, b.head)
	}
	if !b.reserved {
		want := (b.head + b.size + sendChunk - 1) / sendChunk
		if b.size == 0 {
			want = 0
		}
		// A tail that opened a chunk at a boundary and was not used
		// leaves that chunk until the data before it goes; the next
		// tail fills it.
		spare := 0
		if b.size > 0 && (b.head+b.size)%sendChunk == 0 {
			spare = 1
		}
		if len(b.chunks) < want || len(b.chunks) > want+spare {
			t.Fatalf("step %d: %d chunks for %d bytes from %d, want %d", step, len(b.chunks), b.size, b.head, want)
		}
		if b.size == 0 && b.head != 0 {
			t.Fatalf("step %d: empty with head %d", step, b.head)
		}
	}
	for _, c := range b.chunks {
		if len(c) != sendChunk {
			t.Fatalf("step %d: a chunk of %d bytes", step, len(c))
		}
	}
	if got := bytes.Join(b.slices(nil, 0, b.size), nil); !bytes.Equal(got, model) {
		t.Fatalf("step %d: data differs from the model (%d bytes)", step, len(model))
	}
}

// TestSendBufModel runs random tail/commit/unreserve/consume/slices
// sequences, with sizes around the 64 KiB chunks, against a []byte.
func TestSendBufModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		var b sendBuf
		var model []byte
		next := byte(0)
		size := func() int {
			// Mostly sizes that land near chunk boundaries.
			switch rng.IntN(4) {
			case 0:
				return 1 + rng.IntN(16)
			case 1:
				return sendChunk - 8 + rng.IntN(16)
			case 2:
				return 1 + rng.IntN(3*sendChunk)
			}
			return 1 + rng.IntN(2000)
		}
		for step := 0; step < 400; step++ {
			switch op := rng.IntN(10); {
			case op < 4: // the host socket reads into the tail
				max := size()
				r := b.tail(max)
				end := b.head + b.size
				room := sendChunk - end%sendChunk
				if len(r) != min(max, room) || len(r) == 0 {
					t.Fatalf("seed %d step %d: tail(%d) gave %d bytes at %d, want %d", seed, step, max, len(r), end, min(max, room))
				}
				if !b.reserved {
					t.Fatalf("seed %d step %d: tail does not mark the buffer reserved", seed, step)
				}
				n := rng.IntN(len(r) + 1)
				for i := range n {
					r[i] = next
					next++
				}
				if rng.IntN(5) == 0 {
					b.unreserve()
					// What was written but not committed is not data.
					next -= byte(n)
				} else {
					b.commit(n)
					model = append(model, r[:n]...)
				}
				if b.reserved {
					t.Fatalf("seed %d step %d: still reserved after commit", seed, step)
				}
			case op < 7: // the container acknowledges
				if len(model) == 0 {
					continue
				}
				n := rng.IntN(len(model) + 1)
				if rng.IntN(4) == 0 {
					n = len(model)
				}
				b.consume(n)
				model = model[n:]
			case op < 9: // a segment to send or send again
				if len(model) == 0 {
					continue
				}
				off := rng.IntN(len(model))
				n := 1 + rng.IntN(len(model)-off)
				pieces := b.slices(nil, off, n)
				for _, p := range pieces {
					if len(p) == 0 || len(p) > sendChunk {
						t.Fatalf("seed %d step %d: a piece of %d bytes", seed, step, len(p))
					}
				}
				if got := bytes.Join(pieces, nil); !bytes.Equal(got, model[off:off+n]) {
					t.Fatalf("seed %d step %d: slices(%d, %d) differ from the model", seed, step, off, n)
				}
			default: // the flow ends
				if rng.IntN(4) == 0 {
					b.release()
					model = nil
				}
			}
			checkSendBuf(t, &b, model, step)
		}
		b.release()
		if len(b.chunks) != 0 || b.size != 0 || b.head != 0 {
			t.Fatalf("seed %d: after release %d chunks, size %d, head %d", seed, len(b.chunks), b.size, b.head)
		}
	}
}

// TestSendBufReservedTail: the region tail hands out belongs to the
// reader until commit, even when every byte before it is acknowledged
// or the flow ends meanwhile (the host read happens outside the lock).
func TestSendBufReservedTail(t *testing.T) {
	var b sendBuf
	r := b.tail(sendChunk)
	copy(r, bytes.Repeat([]byte{1}, sendChunk-10))
	b.commit(sendChunk - 10)

	// Ten bytes left in the first chunk: a reservation there, then all
	// the data acknowledged.
	r = b.tail(100)
	if len(r) != 10 {
		t.Fatalf("tail gave %d bytes, want the 10 left in the chunk", len(r))
	}
	b.consume(sendChunk - 10)
	if len(b.chunks) != 1 {
		t.Fatalf("%d chunks: the reserved one was given back", len(b.chunks))
	}
	copy(r, "0123456789")
	b.commit(10)
	if got := string(bytes.Join(b.slices(nil, 0, b.size), nil)); got != "0123456789" {
		t.Fatalf("data %q after the reserved commit", got)
	}

	// The chunk is full: the next tail opens a new one, and consuming
	// the old data then frees the old chunk only.
	r = b.tail(5)
	if len(r) != 5 || len(b.chunks) != 2 {
		t.Fatalf("tail gave %d bytes over %d chunks, want 5 in a second chunk", len(r), len(b.chunks))
	}
	b.consume(10)
	if len(b.chunks) != 1 || b.head != 0 {
		t.Fatalf("%d chunks, head %d after consuming the first chunk", len(b.chunks), b.head)
	}
	copy(r, "abcde")
	b.commit(5)
	if got := string(bytes.Join(b.slices(nil, 0, b.size), nil)); got != "abcde" {
		t.Fatalf("data %q", got)
	}

	// release while reserved (the flow closed during a host read) keeps
	// the reserved chunk; unreserve then returns it.
	r = b.tail(1 << 20)
	b.release()
	if b.size != 0 || len(b.chunks) != 1 {
		t.Fatalf("release while reserved: size %d, %d chunks", b.size, len(b.chunks))
	}
	r[0] = 'x' // still the reader's to write
	b.unreserve()
	if len(b.chunks) != 0 || b.head != 0 || b.reserved {
		t.Fatalf("after unreserve: %d chunks, head %d, reserved %v", len(b.chunks), b.head, b.reserved)
	}

	// commit after release (the read completed after the flow closed),
	// then release again, as readHost does.
	r = b.tail(8)
	b.release()
	copy(r, "late")
	b.commit(4)
	b.release()
	if len(b.chunks) != 0 || b.size != 0 {
		t.Fatalf("after a late commit and release: %d chunks, size %d", len(b.chunks), b.size)
	}
}

// TestSendBufIdleHoldsNothing: an unreserved empty buffer holds no chunk,
// and one emptied by acknowledgments starts again at the chunk's start.
func TestSendBufIdleHoldsNothing(t *testing.T) {
	var b sendBuf
	b.tail(100)
	b.unreserve()
	if len(b.chunks) != 0 || b.head != 0 {
		t.Fatalf("an unreserved tail left %d chunks, head %d", len(b.chunks), b.head)
	}
	for _, n := range []int{1, 1000, sendChunk, sendChunk + 1, 3*sendChunk - 7} {
		for b.size < n {
			r := b.tail(n - b.size)
			b.commit(len(r))
		}
		if want := (n + sendChunk - 1) / sendChunk; len(b.chunks) != want {
			t.Errorf("%d bytes in %d chunks, want %d", n, len(b.chunks), want)
		}
		b.consume(n - 1)
		if len(b.chunks) != 1 {
			t.Errorf("one byte left of %d in %d chunks", n, len(b.chunks))
		}
		b.consume(1)
		if len(b.chunks) != 0 || b.head != 0 {
			t.Errorf("all of %d bytes consumed: %d chunks, head %d", n, len(b.chunks), b.head)
		}
	}
}
