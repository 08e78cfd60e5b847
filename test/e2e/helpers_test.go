package e2e

// Client programs that run inside the container: the test binary
// re-executed with RLN_HELPER naming the mode, so that no tool (curl, dig,
// ping) has to be installed in the container.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

const helperEnv = "RLN_HELPER"

// extraHelpers lets other test files add helper modes from init().
var extraHelpers = map[string]func(args []string) error{}

// runHelper runs the helper mode named in the environment, if any, and
// returns its exit status.
func runHelper() (int, bool) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return 0, false
	}
	args := strings.Fields(os.Getenv("RLN_ARGS"))
	var err error
	switch mode {
	case "tcp-sink":
		err = tcpSink(args[0], args[1])
	case "tcp-halfclose":
		err = tcpHalfClose(args[0])
	case "tcp-echo":
		err = tcpEcho(args[0], args[1])
	case "tcp-send-exit":
		err = tcpSendExit(args[0], args[1])
	case "tcp-peer-halfclose":
		err = tcpPeerHalfClose(args[0], args[1], args[2])
	case "tcp-refused":
		err = tcpRefused(args[0])
	case "udp-echo":
		err = udpEcho(args[0])
	case "udp-refused":
		err = udpRefused(args[0])
	case "udp-stream":
		err = udpStream(args[0])
	case "udp-runs":
		err = udpRuns(args[0])
	case "dns":
		err = dnsQuery(args[0], args[1], dns.TypeA)
	case "ping":
		err = ping(args[0])
	case "signal-wait":
		err = signalWait()
	case "link":
		err = linkInfo()
	case "newns":
		err = newNSMode("attach-client")
	case "attach-client":
		err = attachClient(args)
	default:
		if fn, ok := extraHelpers[mode]; ok {
			err = fn(args)
		} else {
			err = fmt.Errorf("unknown helper %q", mode)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
		return 1, true
	}
	fmt.Println("OK")
	return 0, true
}

// pattern is the deterministic payload of large transfers.
func pattern(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func tcpSink(addr, size string) error {
	c, data, err := dialSend(addr, size, 120*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read reply: %w (%s)", err, tcpState(c))
	}
	sum := sha256.Sum256(data)
	want := binary.BigEndian.AppendUint64(sum[:], uint64(len(data)))
	if !bytes.Equal(reply, want) {
		return fmt.Errorf("sink reply %x, want %x", reply, want)
	}
	return nil
}

// tcpHalfClose sends, half-closes, and must still receive the whole echo
// and then EOF. It prints the connection's TCP options (printTCPOptions).
func tcpHalfClose(addr string) error { return halfClose(addr, true) }

func halfClose(addr string, printOpts bool) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if printOpts {
		printTCPOptions(c)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := pattern(300 << 10)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("after %d bytes: %w (%s)", len(got), err, tcpState(c))
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
	return nil
}

// tcpEcho sends size bytes to an echo server while it reads the echo,
// half-closes, and wants the same bytes back and then EOF: a large
// transfer both ways at once.
func tcpEcho(addr, size string) error {
	n, err := strconv.Atoi(size)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	printTCPOptions(c)
	c.SetDeadline(time.Now().Add(120 * time.Second))
	msg := pattern(n)
	got, werr, err := exchange(c, msg)
	if werr != nil {
		return fmt.Errorf("write: %w (read %d bytes; %s)", werr, len(got), tcpState(c))
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w (%s)", len(got), err, tcpState(c))
	}
	if !bytes.Equal(got, msg) {
		i := 0
		for i < min(len(got), len(msg)) && got[i] == msg[i] {
			i++
		}
		return fmt.Errorf("echo returned %d bytes, want %d identical (first difference at byte %d)", len(got), len(msg), i)
	}
	return nil
}

// tcpPeerHalfClose reads the server's greeting (pattern(greeting)) to
// its EOF, the server having half-closed first, then sends size bytes
// (pattern(size)) on the half-open connection, half-closes in turn and
// prints SENT. The server checks what it received; the helper keeps the
// container (and so rootlessnet) alive until stdin's EOF, lest its exit
// cut the data still on its way.
// tcpSendExit sends size bytes, half-closes and returns at once: the
// command exits with its data perhaps still in its socket's queue.
func tcpSendExit(addr, size string) error {
	c, _, err := dialSend(addr, size, 60*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.(*net.TCPConn).CloseWrite()
}

// dialSend connects to addr, prints the connection's TCP options, and
// writes size bytes of pattern within timeout; the caller closes c
// unless err.
func dialSend(addr, size string, timeout time.Duration) (c net.Conn, data []byte, err error) {
	n, err := strconv.Atoi(size)
	if err != nil {
		return nil, nil, err
	}
	c, err = net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	printTCPOptions(c)
	c.SetDeadline(time.Now().Add(timeout))
	data = pattern(n)
	if _, err := c.Write(data); err != nil {
		err = fmt.Errorf("write: %w (%s)", err, tcpState(c))
		c.Close()
		return nil, nil, err
	}
	return c, data, nil
}

func tcpPeerHalfClose(addr, greeting, size string) error {
	lines := soakLines()
	g, err := strconv.Atoi(greeting)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(size)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	printTCPOptions(c)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading the greeting, after %d bytes: %w (%s)", len(got), err, tcpState(c))
	}
	if !bytes.Equal(got, pattern(g)) {
		return fmt.Errorf("greeting of %d bytes, want %d identical", len(got), g)
	}
	if _, err := c.Write(pattern(n)); err != nil {
		return fmt.Errorf("writing after the peer's FIN: %w (%s)", err, tcpState(c))
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	fmt.Println("SENT")
	return soakWaitEOF(lines, 2*time.Minute)
}

// tcpOptions says which options the connection's handshake negotiated,
// from TCP_INFO: "sack=B ts=B wscale=B". The netstack offers SACK and the
// TCP fast path does not, so sack= tells which of them carried it.
func tcpOptions(c net.Conn) string {
	const optTS, optSACK, optWscale = 1, 2, 4 // TCPI_OPT_*
	var info *unix.TCPInfo
	var gerr error
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	}
	if err == nil {
		err = gerr
	}
	if err != nil {
		return "tcp_info=" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	o := info.Options
	return fmt.Sprintf("sack=%t ts=%t wscale=%t", o&optSACK != 0, o&optTS != 0, o&optWscale != 0)
}

// tcpState describes c's connection from TCP_INFO, for a failure's
// message: its state, the bytes the peer acknowledged and those received,
// what is in flight and retransmitted, and the windows.
func tcpState(c net.Conn) string {
	var info *unix.TCPInfo
	var gerr error
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	}
	if err == nil {
		err = gerr
	}
	if err != nil {
		return "no TCP_INFO: " + err.Error()
	}
	states := []string{1: "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}
	state := fmt.Sprint(info.State)
	if int(info.State) < len(states) && states[info.State] != "" {
		state = states[info.State]
	}
	return fmt.Sprintf("TCP_INFO state=%s bytes_sent=%d bytes_acked=%d bytes_received=%d unacked=%d retransmits=%d total_retrans=%d backoff=%d probes=%d rto=%dus snd_mss=%d rcv_mss=%d snd_wnd=%d rcv_wnd=%d snd_cwnd=%d notsent=%d last_data_recv=%dms last_ack_recv=%dms",
		state, info.Bytes_sent, info.Bytes_acked, info.Bytes_received, info.Unacked, info.Retransmits, info.Total_retrans,
		info.Backoff, info.Probes, info.Rto, info.Snd_mss, info.Rcv_mss, info.Snd_wnd, info.Rcv_wnd, info.Snd_cwnd, info.Notsent_bytes,
		info.Last_data_recv, info.Last_ack_recv)
}

// printTCPOptions prints a line with c's options (tcpOptions).
func printTCPOptions(c net.Conn) { fmt.Println("tcp-options", tcpOptions(c)) }

func tcpRefused(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err == nil {
		c.Close()
		return errors.New("connected, want refused")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("got %v, want connection refused", err)
	}
	return nil
}

func udpEcho(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for i := 0; i < 5; i++ {
		msg := fmt.Sprintf("datagram %d", i)
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == msg {
			return nil
		}
	}
	return errors.New("no echo")
}

// udpStream sends datagrams of many sizes on one flow (the first through
// the netstack, the next past it on the link's UDP shortcut, those above
// the MTU as IP fragments through the netstack again) and wants each
// echoed intact.
func udpStream(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	sizes := []int{1, 64, 129, 1400, 0, 1472, 3000, 9000, 30000}
	buf := make([]byte, 64<<10)
	for i := 0; i < 120; i++ {
		msg := make([]byte, sizes[i%len(sizes)])
		for j := range msg {
			msg[j] = byte(i + j)
		}
		echoed := false
		for try := 0; try < 3 && !echoed; try++ {
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			for !echoed {
				n, err := c.Read(buf)
				if err != nil {
					break
				}
				// A late echo of an earlier datagram differs.
				echoed = bytes.Equal(buf[:n], msg)
			}
		}
		if !echoed {
			return fmt.Errorf("datagram %d (%d bytes) was not echoed intact", i, len(msg))
		}
	}
	return nil
}

// udpRuns sends runs of datagrams as one with UDP_SEGMENT (GSO), which
// the TAP hands over whole where it takes USO, and wants every datagram
// echoed intact and none merged or split: the echoes come back in bursts,
// which rootlessnet gathers into runs again towards the container.
func udpRuns(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	uc := c.(*net.UDPConn)
	uc.SetReadBuffer(1 << 20)
	type round struct{ seg, count, last int }
	rounds := []round{{1200, 20, 500}, {100, 60, 100}, {1400, 2, 4}, {8000, 7, 7999}}
	buf := make([]byte, 64<<10)
	for r, rd := range rounds {
		// datagram i of round r: 2 bytes round, 2 bytes index, then a
		// pattern of both.
		want := make([][]byte, rd.count+1)
		var run []byte
		for i := range want {
			size := rd.seg
			if i == rd.count {
				size = rd.last
			}
			d := make([]byte, size)
			for j := range d {
				d[j] = byte(r*31 + i*7 + j)
			}
			binary.BigEndian.PutUint16(d, uint16(r))
			binary.BigEndian.PutUint16(d[2:], uint16(i))
			want[i] = d
			run = append(run, d...)
		}
		oob := make([]byte, syscall.CmsgSpace(2))
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level, h.Type = syscall.IPPROTO_UDP, 103 // SOL_UDP, UDP_SEGMENT
		h.SetLen(syscall.CmsgLen(2))
		binary.NativeEndian.PutUint16(oob[syscall.CmsgLen(0):], uint16(rd.seg))
		ok := false
		for try := 0; try < 3 && !ok; try++ {
			if _, _, err := uc.WriteMsgUDP(run, oob, nil); err != nil {
				return fmt.Errorf("round %d: sendmsg with UDP_SEGMENT: %w", r, err)
			}
			seen := map[int]bool{}
			uc.SetReadDeadline(time.Now().Add(2 * time.Second))
			for len(seen) < len(want) {
				n, err := uc.Read(buf)
				if err != nil {
					break
				}
				if n < 4 || int(binary.BigEndian.Uint16(buf)) != r {
					continue // a late echo of an earlier round
				}
				i := int(binary.BigEndian.Uint16(buf[2:]))
				if i >= len(want) || !bytes.Equal(buf[:n], want[i]) {
					return fmt.Errorf("round %d (runs of %d x %d bytes): datagram %d came back as %d bytes, not as sent (%d bytes)", r, rd.count, rd.seg, i, n, len(want[min(i, len(want)-1)]))
				}
				seen[i] = true
			}
			ok = len(seen) == len(want)
		}
		if !ok {
			return fmt.Errorf("round %d (runs of %d x %d bytes): not every datagram came back in 3 tries", r, rd.count, rd.seg)
		}
	}
	return nil
}

func udpRefused(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for i := 0; i < 5; i++ {
		c.Write([]byte("anyone?"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(buf)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		if err == nil {
			return errors.New("got a reply, want port unreachable")
		}
	}
	return errors.New("no port unreachable arrived")
}

// dnsQuery asks server for name's qtype records over UDP and TCP and
// prints the answer.
func dnsQuery(server, name string, qtype uint16) error {
	for _, network := range []string{"udp", "tcp"} {
		cl := &dns.Client{Net: network, Timeout: 5 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		r, _, err := cl.Exchange(q, server)
		if err != nil {
			return fmt.Errorf("%s: %w", network, err)
		}
		var parts []string
		for _, rr := range append(r.Answer, r.Extra...) {
			switch rr := rr.(type) {
			case *dns.A:
				parts = append(parts, "A="+rr.A.String())
			case *dns.AAAA:
				parts = append(parts, "AAAA="+rr.AAAA.String())
			case *dns.TXT:
				parts = append(parts, "TXT="+strings.Join(rr.Txt, ""))
			}
		}
		fmt.Printf("%s rcode=%s %s\n", network, dns.RcodeToString[r.Rcode], strings.Join(parts, " "))
	}
	return nil
}

// ping sends ICMP or ICMPv6 echo through a raw socket (the container's
// root has CAP_NET_RAW in its own namespace) and waits for the matching
// reply from addr (a link-local IPv6 address takes a %zone).
func ping(addr string) error {
	dst := netip.MustParseAddr(addr)
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var echoType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, laddr, proto = "ip6:ipv6-icmp", "::", 58
		echoType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	c, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		return err
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	for seq := 1; seq <= 3; seq++ {
		// The kernel computes the ICMPv6 checksum.
		m := icmp.Message{Type: echoType, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("rootlessnet")}}
		b, _ := m.Marshal(nil)
		if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 1500)
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			rm, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || rm.Type != replyType {
				continue
			}
			e := rm.Body.(*icmp.Echo)
			if e.ID == id && e.Seq == seq && string(e.Data) == "rootlessnet" && peer.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
				return nil
			}
		}
	}
	return errors.New("no echo reply")
}

// signalWait prints READY and exits 42 on SIGTERM.
func signalWait() error {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	fmt.Println("READY")
	select {
	case <-ch:
		os.Exit(42)
	case <-time.After(30 * time.Second):
	}
	return errors.New("no signal arrived")
}

// newNSMode re-executes the test binary as mode in new user and network
// namespaces made by this (possibly unprivileged) process.
func newNSMode(mode string) error {
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", mode, err)
	}
	os.Exit(0)
	return nil
}

// attachClient prints its pid, waits for rootlessnet to configure tap0,
// then checks a TCP round trip to args[0], and exits.
func attachClient(args []string) error {
	fmt.Printf("PID %d\n", os.Getpid())
	deadline := time.Now().Add(20 * time.Second)
	for {
		if l, err := netlink.LinkByName("tap0"); err == nil {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			if len(addrs) > 0 && l.Attrs().Flags&net.FlagUp != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			return errors.New("tap0 was never configured")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// One line after the PID: TestAttachMode reads no more.
	return halfClose(args[0], false)
}

// linkInfo prints tap0's MTU and MAC as the kernel has them.
func linkInfo() error {
	l, err := netlink.LinkByName("tap0")
	if err != nil {
		return err
	}
	fmt.Printf("mtu=%d mac=%s up=%v\n", l.Attrs().MTU, l.Attrs().HardwareAddr, l.Attrs().Flags&net.FlagUp != 0)
	return nil
}

// exchange writes msg on c, then half-closes it, while it reads c to
// its EOF; it returns what it read, the write's error and the read's.
func exchange(c net.Conn, msg []byte) (got []byte, werr, rerr error) {
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		done <- err
	}()
	got, rerr = io.ReadAll(c)
	return got, <-done, rerr
}
