package relay

import (
	"errors"
	"os"
	"sync"
)

// maxFrame holds the largest frame of a TAP without virtio-net headers:
// an MTU of 65520 and the Ethernet header.
const maxFrame = 65536 + 14

// Frames copies frames both ways between two TAP fds (non-blocking, as
// os.File polls them; each read is one frame) until Stop. It owns both
// files: Stop closes them and waits for the copies to end.
type Frames struct {
	a, b *os.File
	wg   sync.WaitGroup
	once sync.Once
}

// NewFrames starts copying between a and b.
func NewFrames(a, b *os.File) *Frames {
	f := &Frames{a: a, b: b}
	f.wg.Add(2)
	go f.copy(a, b)
	go f.copy(b, a)
	return f
}

func (f *Frames) copy(from, to *os.File) {
	defer f.wg.Done()
	buf := make([]byte, maxFrame)
	for {
		n, err := from.Read(buf)
		if err != nil {
			// Closed (Stop), or the TAP's namespace is gone: the other
			// copy ends with the close.
			f.closeBoth()
			return
		}
		// A full or gone peer drops the frame, as a NIC's queue would;
		// only a closed file ends the copy.
		if _, err := to.Write(buf[:n]); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

func (f *Frames) closeBoth() {
	f.once.Do(func() {
		f.a.Close()
		f.b.Close()
	})
}

// Stop ends both copies and closes the files.
func (f *Frames) Stop() {
	f.closeBoth()
	f.wg.Wait()
}
