package relay

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A UDP flood costs a userspace stack a syscall per datagram each way,
// and on the host's loopback the sender's syscall also pays for the
// receiver's side. The kernel takes runs of same-size datagrams as one:
// sendmsg with UDP_SEGMENT (GSO) on the way out, UDP_GRO on the way in,
// and the TAP's USO (fastpath.WriteUDPBatch) towards the container. The
// functions here gather a burst's datagrams of one flow into such runs.

const (
	// MaxRun is the most payload a run holds: an IPv4 packet's.
	MaxRun = 0xffff - 20 - 8
	// maxRunSegments is the kernel's UDP_MAX_SEGMENTS before Linux 6.x.
	maxRunSegments = 64
	// runBufSize holds a run being gathered and one more datagram read
	// after it (which may be a 64 KiB super-datagram of UDP_GRO).
	runBufSize = MaxRun + 0xffff
)

var runBufs = sync.Pool{New: func() any { b := make([]byte, runBufSize); return &b }}

// UDPBatcher sends a UDP flow's datagrams to a connected host socket: the
// datagrams of one size given between two Flushes go as one sendmsg with
// UDP_SEGMENT, which the kernel splits (or a NIC). Where the kernel
// refuses (no UDP GSO, or segments larger than the route's MTU), it sends
// them one by one from then on. A full socket drops, as UDP may. It is
// used by one goroutine at a time (the read loop).
type UDPBatcher struct {
	rc   syscall.RawConn
	seen func(n int)
	// to is the destination of an unconnected socket's datagrams, a raw
	// sockaddr (empty: the socket is connected).
	to []byte

	buf   *[]byte // the run being held, nil between runs
	n     int     // its bytes
	seg   int     // its datagrams' size
	count int     // its datagrams
	short bool    // its last datagram is shorter than seg: it is complete

	// gsoBelow: runs of datagrams under this size go as one (0: none
	// do any more).
	gsoBelow int

	// The arguments and result of sendFn, which is made once: a closure
	// made per send was an allocation per datagram.
	sendPieces [][]byte
	sendSeg    int
	sendErr    error
	sendFn     func(fd uintptr) bool
	// one holds a run's single piece (a slice literal would escape).
	one [1][]byte
}

// NewUDPBatcher returns a batcher for host, which calls seen with each
// datagram's size.
func NewUDPBatcher(host *net.UDPConn, seen func(n int)) (*UDPBatcher, error) {
	rc, err := host.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &UDPBatcher{rc: rc, seen: seen, gsoBelow: MaxRun + 1}
	b.sendFn = b.sendOn
	return b, nil
}

// NewUDPBatcherTo returns a batcher that sends from the unconnected
// socket host to to (a published UDP port's listener answering one of its
// clients).
func NewUDPBatcherTo(host *net.UDPConn, to netip.AddrPort, seen func(n int)) (*UDPBatcher, error) {
	b, err := NewUDPBatcher(host, seen)
	if err != nil {
		return nil, err
	}
	b.to = rawSockaddr(to, isIPv6Socket(host))
	return b, nil
}

// Datagram takes one datagram in pieces, or with seg > 0 a run of
// datagrams of seg bytes (fastpath.UDPSink); pieces need not outlive the
// call.
func (b *UDPBatcher) Datagram(pieces [][]byte, seg int) {
	size := 0
	for _, p := range pieces {
		size += len(p)
	}
	if seg > 0 && size > seg {
		// The container's own run: on as it came.
		b.Flush()
		for off := 0; off < size; off += seg {
			b.seen(min(seg, size-off))
		}
		b.sendRun(pieces, size, seg)
		return
	}
	b.seen(size)
	if b.count > 0 && (b.short || size > b.seg || b.n+size > MaxRun || b.count == maxRunSegments) {
		b.Flush()
	}
	if size == 0 || size >= b.gsoBelow {
		b.Flush()
		b.send(pieces, 0)
		return
	}
	if b.buf == nil {
		b.buf = runBufs.Get().(*[]byte)
	}
	for _, p := range pieces {
		b.n += copy((*b.buf)[b.n:], p)
	}
	if b.count == 0 {
		b.seg = size
	}
	b.count++
	b.short = size < b.seg
}

// sendRun sends pieces, size bytes, as datagrams of seg bytes: as one
// where the kernel takes it, else one by one.
func (b *UDPBatcher) sendRun(pieces [][]byte, size, seg int) {
	if seg < b.gsoBelow && size <= seg*maxRunSegments {
		err := b.send(pieces, seg)
		if err == nil || !gsoRefused(err) {
			return
		}
		b.gsoBelow = min(b.gsoBelow, seg)
	}
	run := pieces[0]
	if len(pieces) > 1 {
		run = make([]byte, 0, size)
		for _, p := range pieces {
			run = append(run, p...)
		}
	}
	for off := 0; off < len(run); off += seg {
		b.send([][]byte{run[off:min(off+seg, len(run))]}, 0)
	}
}

// Flush sends the run held.
func (b *UDPBatcher) Flush() {
	if b.count == 0 {
		return
	}
	run := (*b.buf)[:b.n]
	seg := b.seg
	if b.count == 1 {
		seg = 0
	}
	b.one[0] = run
	if seg == 0 {
		b.send(b.one[:], 0)
	} else {
		b.sendRun(b.one[:], len(run), seg)
	}
	b.one[0] = nil
	runBufs.Put(b.buf)
	b.buf, b.n, b.seg, b.count, b.short = nil, 0, 0, 0, false
}

// gsoRefused tells a refusal of UDP_SEGMENT from a send that failed for
// other reasons (a full socket, an ICMP error queued).
func gsoRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIO) || errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP)
}

// send writes pieces as one datagram, or as a run of datagrams of seg
// bytes (seg > 0) for the kernel to split.
func (b *UDPBatcher) send(pieces [][]byte, seg int) error {
	b.sendPieces, b.sendSeg, b.sendErr = pieces, seg, nil
	b.rc.Write(b.sendFn)
	b.sendPieces = nil
	return b.sendErr
}

// sendOn is send's body on the socket's fd (sendFn).
func (b *UDPBatcher) sendOn(fd uintptr) bool {
	for {
		if b.sendSeg > 0 {
			b.sendErr = sendSegments(int(fd), b.sendPieces, b.sendSeg, b.to)
		} else {
			// sendmsg, not writev: a zero-length write sends
			// nothing, and an empty datagram is one.
			b.sendErr = sendmsg(int(fd), b.sendPieces, nil, b.to)
		}
		if b.sendErr != unix.EINTR {
			return true
		}
	}
}

// sendSegments sends run, in pieces, on a connected UDP socket as
// datagrams of seg bytes (UDP_SEGMENT).
func sendSegments(fd int, run [][]byte, seg int, to []byte) error {
	var oob [unix.SizeofCmsghdr + 8]byte // CmsgSpace(2)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(seg)
	return sendmsg(fd, run, oob[:unix.CmsgSpace(2)], to)
}

// sendmsg sends pieces as one datagram to to (a raw sockaddr; empty on a
// connected socket) with the control messages oob, without the
// allocations of unix.SendmsgBuffers.
func sendmsg(fd int, pieces [][]byte, oob, to []byte) error {
	var iovs [4]unix.Iovec
	iov := iovs[:0]
	if len(pieces) > len(iovs) {
		iov = make([]unix.Iovec, 0, len(pieces))
	}
	for _, p := range pieces {
		var v unix.Iovec
		if len(p) > 0 {
			v.Base = &p[0]
			v.SetLen(len(p))
		}
		iov = append(iov, v)
	}
	var msg unix.Msghdr
	if len(iov) > 0 {
		msg.Iov = &iov[0]
		msg.SetIovlen(len(iov))
	}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	if len(to) > 0 {
		msg.Name = &to[0]
		msg.Namelen = uint32(len(to))
	}
	_, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// isIPv6Socket says whether c is an AF_INET6 socket, which takes IPv4
// destinations only as IPv4-mapped addresses.
func isIPv6Socket(c *net.UDPConn) bool {
	a, _ := c.LocalAddr().(*net.UDPAddr)
	return a != nil && a.IP.To4() == nil
}

// rawSockaddr is ap as a struct sockaddr_in or, for an AF_INET6 socket,
// sockaddr_in6.
func rawSockaddr(ap netip.AddrPort, v6Socket bool) []byte {
	a := ap.Addr()
	if v6Socket || (a.Is6() && !a.Is4In6()) {
		var sa unix.RawSockaddrInet6
		sa.Family = unix.AF_INET6
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
		sa.Addr = a.As16() // an IPv4 address as ::ffff:a.b.c.d
		return append([]byte(nil), (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&sa))[:]...)
	}
	var sa unix.RawSockaddrInet4
	sa.Family = unix.AF_INET
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	sa.Addr = a.Unmap().As4()
	return append([]byte(nil), (*[unix.SizeofSockaddrInet4]byte)(unsafe.Pointer(&sa))[:]...)
}

// addrOf reads a raw sockaddr of n bytes (recvmsg's msg_name).
func addrOf(sa *unix.RawSockaddrAny, n uint32) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		if n >= unix.SizeofSockaddrInet4 {
			in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&in.Port))[:])
			return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), port)
		}
	case unix.AF_INET6:
		if n >= unix.SizeofSockaddrInet6 {
			in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&in.Port))[:])
			return netip.AddrPortFrom(netip.AddrFrom16(in.Addr).Unmap(), port)
		}
	}
	return netip.AddrPort{}
}

// hostReadBuffer is what a host UDP socket asks for as its receive
// buffer: the kernel caps it at net.core.rmem_max, then doubles it, so a
// socket that asks gets twice the default (rmem_default, usually equal to
// rmem_max), room for the bursts that arrive while the reader waits for a
// CPU.
const hostReadBuffer = 4 << 20

// PrepareHost readies a host UDP socket for runs: a receive buffer as
// large as an unprivileged process may have, and UDP_GRO (EnableGRO).
func PrepareHost(host *net.UDPConn) {
	host.SetReadBuffer(hostReadBuffer)
	EnableGRO(host)
}

// EnableGRO asks the kernel to hand host's datagrams of one flow that
// arrive together (GRO of a NIC, or a sender's GSO run) as one
// super-datagram (UDP_GRO, Linux 5.0); ReadRun splits them again. It
// reports whether the kernel took it.
func EnableGRO(host *net.UDPConn) bool {
	rc, err := host.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
	})
	return serr == nil
}

// RunReader reads the datagrams queued on a connected host socket and
// gathers them into runs of one size for fastpath.WriteUDPBatch. It holds
// a pooled buffer only while datagrams come.
type RunReader struct {
	host *net.UDPConn
	rc   syscall.RawConn
	oob  [unix.SizeofCmsghdr + 8]byte
	from unix.RawSockaddrAny

	// The arguments and results of readFn, made once (a closure per
	// read was an allocation per datagram).
	buf     []byte
	n, oobn int
	namelen uint32
	rerr    unix.Errno
	readFn  func(fd uintptr) bool
}

// NewRunReader returns a reader of host.
func NewRunReader(host *net.UDPConn) (*RunReader, error) {
	rc, err := host.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &RunReader{host: host, rc: rc}
	r.readFn = r.readOn
	return r, nil
}

// ReadRuns waits for a datagram (host's read deadline applies), then
// calls emit with each run of datagrams of seg bytes each (the last may be
// shorter; a run of one has seg equal to its length, an empty datagram
// seg 0) from one source, from, gathered from what
// is queued, until nothing is, and returns nil; or returns the error
// that ended the wait (a timeout, a closed socket, a queued ICMP error
// such as ECONNREFUSED). run is valid only during emit.
func (r *RunReader) ReadRuns(emit func(run []byte, seg int, from netip.AddrPort)) error {
	if err := r.wait(); err != nil {
		return err
	}
	_, err := r.ReadQueued(emit, 0)
	return err
}

// ReadQueued is ReadRuns without the wait: it gathers at most limit
// datagrams (0: no limit) of what is queued, and reports whether it read
// all (more is false once a read found nothing). A reader on an event
// loop calls it when the socket is readable, and a limit keeps one flow's
// flood from holding the loop.
func (r *RunReader) ReadQueued(emit func(run []byte, seg int, from netip.AddrPort), limit int) (more bool, err error) {
	buf := runBufs.Get().(*[]byte)
	defer runBufs.Put(buf)
	b := *buf
	off, seg, count := 0, 0, 0
	var runFrom netip.AddrPort
	flush := func() {
		if off > 0 {
			emit(b[:off], seg, runFrom)
		}
		off, count = 0, 0
	}
	for read := 0; limit == 0 || read < limit; read++ {
		if count >= maxRunSegments || off+seg > MaxRun {
			flush()
		}
		m, gso, from, err := r.readNow(b[off:])
		if err != nil {
			flush()
			if errors.Is(err, ErrNothingQueued) {
				return false, nil
			}
			return false, err
		}
		if count > 0 && from != runFrom {
			// Another source: its own run.
			emit(b[:off], seg, runFrom)
			copy(b, b[off:off+m])
			off, count = 0, 0
		}
		got := b[off : off+m]
		switch {
		case m == 0:
			// An empty datagram (a keepalive): one of its own.
			flush()
			emit(b[:0], 0, from)
		case gso > 0 && gso < m:
			// A super-datagram: a run of its own.
			flush()
			copy(b, got)
			emit(b[:m], gso, from)
		case count == 0:
			off, seg, count, runFrom = m, m, 1, from
		case m == seg:
			off += m
			count++
		case m < seg:
			// A short one ends the run.
			off += m
			flush()
		default:
			// Larger: the run ends before it, and it starts the next.
			emit(b[:off], seg, runFrom)
			copy(b, got)
			off, seg, count = m, m, 1
		}
	}
	flush()
	return true, nil
}

// readNow reads a datagram already queued into buf without waiting, with
// the segment size UDP_GRO gives a super-datagram (0 for one datagram)
// and its source.
func (r *RunReader) readNow(buf []byte) (n, gso int, from netip.AddrPort, err error) {
	r.buf = buf
	cerr := r.rc.Read(r.readFn)
	r.buf = nil
	switch {
	case cerr != nil:
		return 0, 0, from, cerr
	case r.rerr == unix.EAGAIN:
		return 0, 0, from, ErrNothingQueued
	case r.rerr != 0:
		return 0, 0, from, r.opError("recvmsg", r.rerr)
	}
	return r.n, groSize(r.oob[:r.oobn]), addrOf(&r.from, r.namelen), nil
}

// readOn is readNow's recvmsg on the socket's fd (readFn).
func (r *RunReader) readOn(fd uintptr) bool {
	for {
		var iov unix.Iovec
		if len(r.buf) > 0 {
			iov.Base = &r.buf[0]
			iov.SetLen(len(r.buf))
		}
		msg := unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&r.from)),
			Namelen: unix.SizeofSockaddrAny,
			Iov:     &iov,
			Control: &r.oob[0],
		}
		msg.SetIovlen(1)
		msg.SetControllen(len(r.oob))
		got, _, e := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
		r.n, r.oobn, r.namelen, r.rerr = int(got), int(msg.Controllen), msg.Namelen, e
		if e != unix.EINTR {
			return true // never wait
		}
	}
}

// wait waits until a datagram (or an error) is queued, without reading
// it; the socket's read deadline applies.
func (r *RunReader) wait() error { return waitDatagram(r.host, r.rc) }

func (r *RunReader) opError(op string, errno unix.Errno) error {
	return &net.OpError{Op: "read", Net: "udp", Source: r.host.LocalAddr(), Addr: r.host.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// groSize finds the UDP_GRO segment size in a control message buffer.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])))
		}
		oob = oob[min(len(oob), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
	return 0
}
