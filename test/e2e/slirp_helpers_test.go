package e2e

// Container-side helper modes for the slirp4netns-compatibility tests
// (slirp_test.go): servers that report the address a client comes from,
// a container made in new user+network namespaces for the slirp4netns
// PID form, and the container side of rootlesskit's drop-in test.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// slirpGuestPort is where the container-side servers listen.
const slirpGuestPort = 8080

func init() {
	// slirp-rk-container ECHO_ADDR: a round trip to ECHO_ADDR (the world's
	// loopback through 10.0.2.2), then serve one connection on :8080 with
	// the peer's address, within 30 s.
	extraHelpers["slirp-rk-container"] = slirpRKContainer
	// slirp-whoami-server: serve every connection on :8080 with the peer's
	// address until stdin reaches EOF (at most 90 s).
	extraHelpers["slirp-whoami-server"] = func([]string) error { return slirpWhoamiUntilEOF() }
	// slirp-newns: run slirp-container in new user+network namespaces made
	// by this (possibly unprivileged) process.
	extraHelpers["slirp-newns"] = slirpNewNS
	// slirp-container: print "PID n", wait for tap0 to be configured by
	// rootlessnet -c, then act as slirp-whoami-server.
	extraHelpers["slirp-container"] = slirpContainer
}

func slirpRKContainer(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: slirp-rk-container ECHO_ADDR")
	}
	if err := slirpEchoOnce(args[0], []byte("through rootlesskit and rootlessnet")); err != nil {
		return fmt.Errorf("echo via %s: %w", args[0], err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", slirpGuestPort))
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Println("READY")
	l.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := l.Accept()
	if err != nil {
		return fmt.Errorf("no connection arrived: %w", err)
	}
	return slirpServeWhoami(c)
}

// slirpEchoOnce sends msg, half-closes, and wants msg back and then EOF.
func slirpEchoOnce(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %q, want %q", got, msg)
	}
	return nil
}

// slirpServeWhoami writes the peer's address, then the options of the
// connection's handshake as tcpOptions has them ("ADDR sack=B ts=B
// wscale=B": the netstack offers SACK and the TCP fast path does not, so
// sack= says which carried a published port's connection), and a
// newline, and closes.
func slirpServeWhoami(c net.Conn) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, c.RemoteAddr().String()+" "+tcpOptions(c)+"\n")
	return err
}

// slirpWhoamiUntilEOF serves the peer's address on TCP :8080 and UDP
// :8081, both families, until stdin's EOF (at most 90 s).
func slirpWhoamiUntilEOF() error {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", slirpGuestPort))
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", slirpGuestPort+1))
	if err != nil {
		l.Close()
		return err
	}
	var wg sync.WaitGroup
	wg.Add(2)
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
				slirpServeWhoami(c)
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(from.String()), from)
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
	case err := <-eof:
		res = err
	case <-time.After(90 * time.Second):
		res = errors.New("stdin never reached EOF")
	}
	l.Close()
	pc.Close()
	wg.Wait()
	return res
}

func slirpNewNS([]string) error { return newNSMode("slirp-container") }

func slirpContainer([]string) error {
	fmt.Printf("PID %d\n", os.Getpid())
	if err := slirpWaitTap("tap0", 20*time.Second); err != nil {
		return err
	}
	return slirpWhoamiUntilEOF()
}

// slirpWaitTap waits until name is up with an IPv4 address and a
// default route.
func slirpWaitTap(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if l, err := netlink.LinkByName(name); err == nil {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
			def := false
			for _, r := range routes {
				if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
					def = true
				}
			}
			if len(addrs) > 0 && def && l.Attrs().Flags&net.FlagUp != 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s was never configured", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
