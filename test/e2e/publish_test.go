package e2e

// Published TCP ports on both paths: with --tcp-fastpath (the default) a
// published port's host connection becomes a fast-path flow that opens
// the connection to the container itself (fastpath.Path.DialTCP), from the
// client's address. Transfers both ways through published ports, a
// container that sent nothing before its first client, and a client
// that connects again from the same port after the container closed
// first (the container's socket is then in TIME-WAIT).
//
// The container's servers report the options of the connection they
// accepted (tcpOptions: "sack=false" on the fast path, "sack=true" on
// the netstack), so each check also says which path carried it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

func init() {
	// publish-echo-server: on TCP :8080, both families, every
	// connection gets a line "PEER_ADDR sack=B ts=B wscale=B", then
	// the echo of what it sends until its FIN, then FIN; until stdin's
	// EOF (at most 90 s).
	extraHelpers["publish-echo-server"] = func([]string) error { return publishEchoServer() }
	// quiet-newns: quiet-container in new user+net namespaces.
	extraHelpers["quiet-newns"] = func([]string) error { return newNSMode("quiet-container") }
	// quiet-container: IPv6 off in its new namespace before tap0 exists
	// (no router solicitation, DAD or MLD report when it comes up), so
	// that the container sends no frame until a client connects; then
	// as slirp-container.
	extraHelpers["quiet-container"] = quietContainer
}

// publishWarmUp makes one connection through the published port at addr
// and wants a reply, whatever path carried it: a container that has sent
// no frame yet is reached through the netstack (the link does not know
// its MAC; TestPublishQuietContainer is about that), and the netstack's
// ARP request teaches the link. The checks that follow are about every
// connection after the first.
func (e *env) publishWarmUp(t *testing.T, p *slirpProc, addr string) {
	t.Helper()
	if _, err := e.slirpWhoami(addr, ""); err != nil {
		t.Fatalf("the first connection through %s: %v\n%s", addr, err, p.output())
	}
}

// runServer starts `rootlessnet run [flags] -- helper MODE` and waits
// for the server to print READY. Closing the returned stdin ends it.
func (e *env) runServer(t *testing.T, ctx context.Context, mode string, flags ...string) (*slirpProc, io.WriteCloser) {
	t.Helper()
	full := append([]string{"run", "--resolv-conf", e.w.ResolvConf()}, flags...)
	full = append(full, "--", e.helper)
	cmd := e.command(ctx, full...)
	cmd.Env = append(cmd.Env, helperEnv+"="+mode)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := e.slirpStart(t, cmd)
	t.Cleanup(func() { in.Close() })
	if !p.stdout.waitFor("READY", p, 30*time.Second) {
		t.Fatalf("the container's server never got ready\n%s", p.output())
	}
	return p, in
}

// publishedEcho sends n bytes through the published port at addr (from
// local when not empty) to publish-echo-server while reading the echo,
// half-closes, and wants all of it back and then EOF. The server's first
// line must show an address starting with wantPrefix and, with check,
// the path tcp selects.
func (e *env) publishedEcho(t *testing.T, tcp []string, p *slirpProc, addr, local, wantPrefix string, n int, check bool) {
	t.Helper()
	var c net.Conn
	if err := e.w.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("dialing %s: %v\n%s", addr, err, p.output())
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("through %s: no greeting from the server: %q, %v (%s)\n%s", addr, line, err, tcpState(c), p.output())
	}
	seen, opts, _ := strings.Cut(strings.TrimSpace(line), " ")
	if !strings.HasPrefix(seen, wantPrefix) {
		t.Errorf("through %s (from %q) the container saw %q, want %sPORT", addr, local, seen, wantPrefix)
	}
	if check {
		checkCarrier(t, tcp, "through "+addr+": "+opts)
	}
	data := pattern(n)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, br)
	if err != nil {
		t.Fatalf("through %s: reading the echo: %v after %d of %d bytes (%s)", addr, err, got, n, tcpState(c))
	}
	if err := <-werr; err != nil {
		t.Fatalf("through %s: writing: %v (%s)", addr, err, tcpState(c))
	}
	if want := sha256.Sum256(data); got != int64(n) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("through %s: the echo was %d bytes, other than the %d sent", addr, got, n)
	}
}

// TestPublishTransfer: large transfers both ways at once through
// published ports on both paths: from a loopback client (the container
// sees the gateway) and from a real IPv6 address (kept), at the default
// MTU with the offloads, and from a real IPv4 address at MTU 1500.
func TestPublishTransfer(t *testing.T) {
	forEachTCPPath(t, unprivilegedOnly, func(t *testing.T, e *env, tcp []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const size = 32 << 20
		lo := e.slirpFreePort(t, "127.0.0.1")
		any6 := e.slirpFreePort(t, "[::]")
		p, in := e.runServer(t, ctx, "publish-echo-server", withFlags(tcp, "-6",
			"-p", fmt.Sprintf("127.0.0.1:%d:8080", lo),
			"-p", fmt.Sprintf("[::]:%d:8080", any6))...)
		loAddr := fmt.Sprintf("127.0.0.1:%d", lo)
		e.publishedEcho(t, tcp, p, loAddr, "", "10.0.2.2:", 0, false) // warm-up (publishWarmUp)
		e.publishedEcho(t, tcp, p, loAddr, "", "10.0.2.2:", size, true)
		e.publishedEcho(t, tcp, p, fmt.Sprintf("[%s]:%d", world.UplinkV6, any6), world.UplinkV6, "["+world.UplinkV6+"]:", size, true)
		slirpFinish(t, p, in)

		any4 := e.slirpFreePort(t, "0.0.0.0")
		p, in = e.runServer(t, ctx, "publish-echo-server", withFlags(tcp, "--mtu", "1500",
			"-p", fmt.Sprintf("0.0.0.0:%d:8080", any4))...)
		addr := fmt.Sprintf("%s:%d", world.UplinkV4, any4)
		e.publishedEcho(t, tcp, p, addr, world.UplinkV4, world.UplinkV4+":", 0, false)
		e.publishedEcho(t, tcp, p, addr, world.UplinkV4, world.UplinkV4+":", size, true)
		slirpFinish(t, p, in)
	})
}

// TestPublishQuietContainer: a container that has sent no frame when its
// first client comes (IPv6 off, so nothing on tap0's way up; a server
// waits for clients and sends nothing) is reached, and on the fast path
// the first connection is the fast path's too, as every later one.
//
// The fast path needs the container's MAC, which the link learns from a
// frame of the container's; DialTCPFast without it returns
// ErrFastUnavailable and the netstack carries the connection.
func TestPublishQuietContainer(t *testing.T) {
	forEachTCPPath(t, unprivilegedOnly, func(t *testing.T, e *env, tcp []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		pid, cp, ctrIn := e.containerAs(t, ctx, "quiet-newns")
		sock := filepath.Join(e.scratch, "api.sock")
		rp := e.slirpStart(t, e.command(ctx, withFlags(tcp, "--resolv-conf", e.w.ResolvConf(), "-c", "-a", sock, strconv.Itoa(pid), "tap0")...))
		if !cp.stdout.waitFor("READY", cp, 20*time.Second) {
			t.Fatalf("the container never saw tap0 configured\ncontainer %s\nrootlessnet %s", cp.output(), rp.output())
		}
		port := e.slirpFreePort(t, "127.0.0.1")
		slirpAddHostfwd(t, sock, "127.0.0.1", port, slirpGuestPort)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		t.Run("first", func(t *testing.T) { e.publishedWhoami(t, tcp, rp, addr, "", "10.0.2.2:") })
		t.Run("second", func(t *testing.T) { e.publishedWhoami(t, tcp, rp, addr, "", "10.0.2.2:") })

		rp.cmd.Process.Signal(syscall.SIGTERM)
		if status, ok := rp.wait(10 * time.Second); !ok || status != 0 {
			t.Errorf("rootlessnet after SIGTERM: status %d (exited %v)\n%s", status, ok, rp.output())
		}
		ctrIn.Close()
		if status, ok := cp.wait(15 * time.Second); !ok || status != 0 {
			t.Errorf("container: status %d (exited %v)\n%s", status, ok, cp.output())
		}
	})
}

// TestPublishClientPortReuse: a client that connects again from the same
// port, each time after the container's server closed first, is served
// every time (each within a few seconds). The container's socket of the
// last connection is in TIME-WAIT then; the netstack dials the container
// from a port of its own, but the fast path dials from the client's
// port, so its SYN meets that TIME-WAIT: Linux takes it as a new
// connection only if its ISN is above the old connection's last
// sequence number, and otherwise answers with an ACK of the old one, to
// which a SYN-SENT side answers RST (RFC 9293 3.10.7.3) that ends the
// TIME-WAIT, and sends its SYN again.
func TestPublishClientPortReuse(t *testing.T) {
	forEachTCPPath(t, unprivilegedOnly, func(t *testing.T, e *env, tcp []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		port := e.slirpFreePort(t, "127.0.0.1")
		p, in := e.slirpRunServer(t, ctx, withFlags(tcp, "-p", fmt.Sprintf("127.0.0.1:%d:%d", port, slirpGuestPort))...)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		e.publishWarmUp(t, p, addr)
		local := e.slirpFreePort(t, "127.0.0.1")
		for i := range 8 {
			start := time.Now()
			got, err := e.whoamiFrom(addr, local)
			el := time.Since(start)
			if err != nil {
				t.Fatalf("connection %d from 127.0.0.1:%d (after the container closed the one before): %v after %v\n%s",
					i+1, local, err, el.Round(time.Millisecond), p.output())
			}
			seen, opts, _ := strings.Cut(got, " ")
			if seen != fmt.Sprintf("10.0.2.2:%d", local) && isFast(tcp) {
				t.Logf("connection %d: the container saw %s (the fast path took another port)", i+1, seen)
			}
			checkCarrier(t, tcp, opts)
			if el > 5*time.Second {
				t.Errorf("connection %d from the same port took %v", i+1, el)
			}
		}
		slirpFinish(t, p, in)
	})
}

// whoamiFrom is slirpWhoami from 127.0.0.1:local.
func (e *env) whoamiFrom(addr string, local int) (string, error) {
	var c net.Conn
	err := e.w.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: local}}
		var err error
		// The client's last connection on this port may still be
		// closing for a moment.
		for range 50 {
			if c, err = d.Dial("tcp", addr); !errors.Is(err, syscall.EADDRINUSE) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if len(b) == 0 {
		return "", errors.New("connection closed with no reply")
	}
	return strings.TrimSpace(string(b)), nil
}

// ---------------------------------------------------------------------
// Container side.

func publishEchoServer() error {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", slirpGuestPort))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := publishEcho(c.(*net.TCPConn)); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
	}()
	fmt.Println("READY")
	eof := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, os.Stdin)
		eof <- err
	}()
	var res error
	select {
	case res = <-eof:
	case <-time.After(90 * time.Second):
		res = errors.New("stdin never reached EOF")
	}
	l.Close()
	wg.Wait()
	return errors.Join(append(errs, res)...)
}

func publishEcho(c *net.TCPConn) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, c.RemoteAddr().String()+" "+tcpOptions(c)+"\n"); err != nil {
		return err
	}
	if _, err := io.Copy(c, c); err != nil {
		return fmt.Errorf("echo to %v: %w (%s)", c.RemoteAddr(), err, tcpState(c))
	}
	return c.CloseWrite()
}

func quietContainer([]string) error {
	for _, conf := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/disable_ipv6", []byte("1"), 0); err != nil {
			return err
		}
	}
	return slirpContainer(nil)
}
