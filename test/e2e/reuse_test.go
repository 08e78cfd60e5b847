package e2e

// A container that aborts a connection may reuse its 4-tuple at once (no
// TIME_WAIT after a reset); the new connection must not be refused while
// the netstack is still tearing the old one down.

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func init() {
	// reuse-after-reset ECHO N: N times, connect to ECHO from one fixed
	// local port, do a round trip, abort with RST, and reconnect at once.
	extraHelpers["reuse-after-reset"] = reuseAfterReset
}

func TestReuseTupleAfterReset(t *testing.T) {
	forEachTCPPath(t, rootOnly, func(t *testing.T, e *env, tcp []string) {
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		out := e.mustTCP(tcp, nil, "reuse-after-reset", echo.String(), "500")
		t.Log(out)
	})
}

func reuseAfterReset(args []string) error {
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	local := &net.TCPAddr{IP: net.IPv4(10, 0, 2, 100), Port: 45678}
	d := net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}
	refused, opts := 0, ""
	for i := 0; i < n; i++ {
		c, err := d.Dial("tcp", args[0])
		if errors.Is(err, syscall.ECONNREFUSED) {
			refused++
			continue
		}
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if opts == "" {
			opts = tcpOptions(c)
		}
		buf := make([]byte, 4)
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		if _, err := c.Read(buf); err != nil {
			return fmt.Errorf("connection %d: read: %w", i, err)
		}
		// SO_LINGER 0: close sends RST and leaves no TIME_WAIT, so the
		// next dial reuses the same 4-tuple.
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	fmt.Printf("%d connections from one port, %d refused; the first's %s\n", n, refused, opts)
	if refused > 0 {
		return fmt.Errorf("%d of %d connections reusing a reset 4-tuple were refused", refused, n)
	}
	return nil
}
