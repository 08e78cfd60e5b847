package portfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// SockDiag lists a network namespace's serving sockets (SocketLister)
// through a NETLINK_SOCK_DIAG socket made in that namespace: a socket
// keeps the namespace it was created in, so the stack, which lives in
// the host's namespace and may not enter the container's, asks its
// kernel about the container's sockets with it.
type SockDiag struct {
	mu  sync.Mutex
	f   *os.File
	seq uint32
	buf []byte
}

const (
	// inetDiagReqLen and inetDiagMsgLen are the sizes of struct
	// inet_diag_req_v2 and struct inet_diag_msg.
	inetDiagReqLen   = 56
	inetDiagMsgLen   = 72
	inetDiagSKV6Only = 11 // INET_DIAG_SKV6ONLY
	tcpListen        = 10 // TCP_LISTEN
	tcpClose         = 7  // TCP_CLOSE: an unconnected UDP socket
	sockDiagTimeout  = 2  // seconds a reply may take
)

// NewSockDiag takes f, a NETLINK_SOCK_DIAG socket; Close closes it.
func NewSockDiag(f *os.File) (*SockDiag, error) {
	fd := int(f.Fd()) // blocking, with a receive timeout below
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err == nil && domain != unix.AF_NETLINK {
		err = fmt.Errorf("not a netlink socket (domain %d)", domain)
	}
	if err == nil {
		err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: sockDiagTimeout})
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	return &SockDiag{f: f, buf: make([]byte, 64<<10)}, nil
}

// Close closes the socket.
func (d *SockDiag) Close() error { return d.f.Close() }

// Sockets lists the listening TCP sockets and the bound, unconnected UDP
// sockets, IPv4 and IPv6.
func (d *SockDiag) Sockets() ([]Socket, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Socket
	for _, q := range []struct {
		proto  Proto
		ipp    uint8
		family uint8
		state  uint32
	}{
		{ProtoTCP, unix.IPPROTO_TCP, unix.AF_INET, tcpListen},
		{ProtoTCP, unix.IPPROTO_TCP, unix.AF_INET6, tcpListen},
		{ProtoUDP, unix.IPPROTO_UDP, unix.AF_INET, tcpClose},
		{ProtoUDP, unix.IPPROTO_UDP, unix.AF_INET6, tcpClose},
	} {
		socks, err := d.dump(q.family, q.ipp, 1<<q.state)
		if err != nil {
			return nil, err
		}
		for i := range socks {
			socks[i].Proto = q.proto
		}
		out = append(out, socks...)
	}
	return out, nil
}

// dump asks for the sockets of one family and protocol in the states of
// the mask, and reads the dump to its end.
func (d *SockDiag) dump(family, proto uint8, states uint32) ([]Socket, error) {
	d.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+inetDiagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], d.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, proto
	ne.PutUint32(r[4:], states)
	fd := int(d.f.Fd())
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	var out []Socket
	for {
		n, _, err := unix.Recvfrom(fd, d.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != d.seq {
				continue // the rest of a dump that timed out before
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(ne.Uint32(m.Data)); errno != 0 {
						return nil, fmt.Errorf("sock_diag: %w", syscall.Errno(errno))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if s, ok := parseInetDiagMsg(m.Data); ok {
					out = append(out, s)
				}
			}
		}
	}
}

// parseInetDiagMsg reads a struct inet_diag_msg and its attributes.
func parseInetDiagMsg(b []byte) (Socket, bool) {
	if len(b) < inetDiagMsgLen {
		return Socket{}, false
	}
	var s Socket
	s.Port = binary.BigEndian.Uint16(b[4:6])
	switch b[0] {
	case unix.AF_INET:
		s.Addr = netip.AddrFrom4([4]byte(b[8:12]))
	case unix.AF_INET6:
		s.Addr = netip.AddrFrom16([16]byte(b[8:24]))
	default:
		return Socket{}, false
	}
	for attrs := b[inetDiagMsgLen:]; len(attrs) >= 4; {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:])
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == inetDiagSKV6Only && l >= 5 {
			s.V6Only = attrs[4] != 0
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return s, true
}
