package userns

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxMessage bounds one control message; they are small JSON objects.
const maxMessage = 64 << 10

// maxFDs bounds the descriptors one message carries: a multi-queue TAP's
// fds (up to tap.MaxQueues) and a socket or two. More would be cut off
// (MSG_CTRUNC) and lost.
const maxFDs = 32

// Conn is the control channel between the parent and a child it started in
// other namespaces: a SOCK_SEQPACKET pair, so that each message arrives
// whole, carrying JSON and optionally file descriptors (SCM_RIGHTS).
type Conn struct {
	uc *net.UnixConn
}

// SocketPair returns both ends of a new control channel. The child's end is
// returned as a file to hand to exec.Cmd.ExtraFiles.
func SocketPair() (*Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	parent := os.NewFile(uintptr(fds[0]), "control")
	child := os.NewFile(uintptr(fds[1]), "control-child")
	c, err := FileConn(parent)
	parent.Close()
	if err != nil {
		child.Close()
		return nil, nil, err
	}
	return c, child, nil
}

// FileConn makes a Conn of an inherited control socket. f may be closed
// afterwards.
func FileConn(f *os.File) (*Conn, error) {
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, errors.New("control socket is not a unix socket")
	}
	return &Conn{uc: uc}, nil
}

// Send writes msg as one message with files attached.
func (c *Conn) Send(msg any, files ...*os.File) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.uc.WriteMsgUnix(b, oob, nil)
	return err
}

// Recv reads one message into msg and returns the files that came with it.
// io.EOF means the other side closed the channel.
func (c *Conn) Recv(msg any) ([]*os.File, error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, _, _, err := c.uc.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		return nil, errEOF
	}
	if err != nil {
		return nil, err
	}
	var files []*os.File
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMessage, err)
		}
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "received"))
			}
		}
	}
	if n == 0 {
		closeAll(files)
		return nil, errEOF
	}
	if err := json.Unmarshal(buf[:n], msg); err != nil {
		closeAll(files)
		return nil, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	return files, nil
}

// ErrMessage marks a message that arrived but could not be decoded; the
// channel itself is still usable.
var ErrMessage = errors.New("bad control message")

// errEOF is what Recv returns when the peer closed the channel: a
// zero-length read on a SOCK_SEQPACKET socket.
var errEOF = fmt.Errorf("control channel closed: %w", syscall.ECONNRESET)

// IsClosed reports whether err means the peer closed the channel.
func IsClosed(err error) bool { return errors.Is(err, errEOF) }

// SetDeadline bounds the pending and future Send and Recv calls; the zero
// time removes the bound.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// KeepOnExec lets the channel's descriptor survive an execve of this
// process and returns its number, for the new program to adopt with
// FileConn.
func (c *Conn) KeepOnExec() (int, error) {
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var ferr error
	if err := rc.Control(func(f uintptr) {
		fd = int(f)
		_, ferr = unix.FcntlInt(f, unix.F_SETFD, 0)
	}); err != nil {
		return -1, err
	}
	if ferr != nil {
		return -1, fmt.Errorf("control socket %s: %w", strconv.Itoa(fd), ferr)
	}
	return fd, nil
}

// Close closes the channel.
func (c *Conn) Close() error { return c.uc.Close() }

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// NewConn makes a Conn of a connected SOCK_SEQPACKET unix socket, such as
// one accepted on a rootless network's control socket.
func NewConn(uc *net.UnixConn) *Conn { return &Conn{uc: uc} }

// Dial connects to a SOCK_SEQPACKET unix socket at path.
func Dial(path string) (*Conn, error) {
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return &Conn{uc: uc}, nil
}
