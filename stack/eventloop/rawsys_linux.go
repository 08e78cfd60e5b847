package eventloop

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The data path's read, write, readv and writev (Read, Write, Readv,
// Writev) go straight to the kernel
// (RawSyscall), without the runtime's syscall bookkeeping. Every fd here
// is non-blocking, so no call blocks and none needs its P handed off;
// and the bookkeeping woke sysmon after every idle spell, which with a
// request/response load is once per round trip: a context switch and a
// few µs of CPU each time.

// maxIovs bounds the iovecs of one call: a frame's headers and payload
// pieces.
const maxIovs = 16

func Read(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := syscall.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func Write(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func Readv(fd int, bufs [][]byte) (int, error) {
	if len(bufs) > maxIovs {
		return unix.Readv(fd, bufs)
	}
	var iov [maxIovs]unix.Iovec
	n := fillIovecs(&iov, bufs)
	r, _, e := syscall.RawSyscall(unix.SYS_READV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func Writev(fd int, bufs [][]byte) (int, error) {
	if len(bufs) > maxIovs {
		return unix.Writev(fd, bufs)
	}
	var iov [maxIovs]unix.Iovec
	n := fillIovecs(&iov, bufs)
	r, _, e := syscall.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// fillIovecs describes bufs (at most maxIovs, empty ones skipped) and
// returns how many iovecs it filled.
func fillIovecs(iov *[maxIovs]unix.Iovec, bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		iov[n].Base = &b[0]
		iov[n].SetLen(len(b))
		n++
	}
	return n
}
