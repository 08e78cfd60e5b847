package e2e

// Published ports as users give them elsewhere: ranges and a lone port
// (-p 8000-8010:9000-9010, -p 8080), automatic forwarding of what the
// container listens on (-p auto), and the listing of published ports
// with their source (list_hostfwd's "source", rootlessnet ports).
//
// The container's port-server answers each TCP connection, and each UDP
// datagram, with "LOCALPORT PEER", so a reply says which guest port a
// host port reached and whom the container saw.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

func init() {
	// port-server [NET:ADDR:PORT...]: listen on each (NET tcp, tcp6,
	// udp...; e.g. tcp:0.0.0.0:8080), print READY, then obey stdin's
	// lines "listen NET ADDR:PORT" and "close NET ADDR:PORT", each
	// answered with "DONE N" (N counts the lines from 1), until EOF.
	extraHelpers["port-server"] = portServer
	// auto-newns: auto-container in new user+net namespaces.
	extraHelpers["auto-newns"] = func([]string) error { return newNSMode("auto-container") }
	// auto-container: print "PID n", wait for tap0 to be configured,
	// then act as port-server on TCP 0.0.0.0:8080.
	extraHelpers["auto-container"] = func([]string) error {
		fmt.Printf("PID %d\n", os.Getpid())
		if err := slirpWaitTap("tap0", 20*time.Second); err != nil {
			return err
		}
		return portServer([]string{"tcp:0.0.0.0:8080"})
	}
}

// portProc is a running port-server under rootlessnet.
type portProc struct {
	*slirpProc
	in    io.WriteCloser
	lines int
}

// startPortServer starts `rootlessnet run FLAGS -- helper port-server
// LISTENS...` and waits for READY.
func (e *env) startPortServer(t *testing.T, ctx context.Context, flags []string, listens ...string) *portProc {
	t.Helper()
	full := append([]string{"run", "--resolv-conf", e.w.ResolvConf()}, flags...)
	full = append(full, "--", e.helper)
	cmd := e.command(ctx, full...)
	cmd.Env = append(cmd.Env, helperEnv+"=port-server", "RLN_ARGS="+strings.Join(listens, " "))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &portProc{slirpProc: e.slirpStart(t, cmd), in: in}
	t.Cleanup(func() { in.Close() })
	if !p.stdout.waitFor("READY", p.slirpProc, 30*time.Second) {
		t.Fatalf("the container's port-server never got ready\n%s", p.output())
	}
	return p
}

// do sends a command to the port-server and waits for it to be done.
func (p *portProc) do(t *testing.T, command string) {
	t.Helper()
	p.lines++
	if _, err := fmt.Fprintln(p.in, command); err != nil {
		t.Fatalf("%s: %v\n%s", command, err, p.output())
	}
	if !p.stdout.waitFor(fmt.Sprintf("DONE %d\n", p.lines), p.slirpProc, 10*time.Second) {
		t.Fatalf("%s: not done\n%s", command, p.output())
	}
	if strings.Contains(p.stdout.String(), "FAILED") {
		t.Fatalf("%s failed\n%s", command, p.output())
	}
}

func (p *portProc) finish(t *testing.T) {
	t.Helper()
	slirpFinish(t, p.slirpProc, p.in)
}

// udpWhoami sends a datagram to addr from the world and returns the
// reply (1 s per try).
func (e *env) udpWhoami(addr string) (string, error) {
	var reply string
	err := e.w.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("who")); err != nil {
			return err
		}
		b := make([]byte, 512)
		n, err := c.Read(b)
		reply = string(b[:n])
		return err
	})
	return reply, err
}

// eventually retries fn until it returns nil or timeout passes, and
// returns its last error.
func eventually(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantReply wants a TCP (proto "tcp") or UDP reply from addr that starts
// with want, within a bounded retry.
func (e *env) wantReply(t *testing.T, p *slirpProc, proto, addr, want string) {
	t.Helper()
	var got string
	err := eventually(15*time.Second, func() error {
		var err error
		if proto == "udp" {
			got, err = e.udpWhoami(addr)
		} else {
			got, err = e.slirpWhoami(addr, "")
		}
		if err == nil && !strings.HasPrefix(got, want) {
			err = fmt.Errorf("reply %q", got)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s %s: %v (last reply %q), want a reply %q...\n%s", proto, addr, err, got, want, p.output())
	}
}

// TestPublishUDPRuns sends runs of datagrams (UDP_SEGMENT) to a published
// UDP port from the world and from the host's loopback, on the fast path
// and through the netstack (--offload=false keeps the shortcut; the
// capture takes it away), and wants every datagram echoed intact by the
// container: runs are gathered and sent as one both ways, per client.
func TestPublishUDPRuns(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		for _, flags := range [][]string{nil, {"--offload=false"}, {"--pcap", filepath.Join(e.scratch, "runs.pcap")}} {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			p := e.startPortServer(t, ctx, append([]string{"-p", "0.0.0.0:24000:9000/udp"}, flags...), "udpecho:0.0.0.0:9000")
			for _, addr := range []string{"127.0.0.1:24000", world.UplinkV4 + ":24000"} {
				if err := e.w.Do(func() error { return udpRuns(addr) }); err != nil {
					t.Errorf("%v, to %s: %v", flags, addr, err)
				}
			}
			p.finish(t)
			cancel()
		}
	})
}

// TestPublishRanges: -p with ranges and lone ports maps each host port
// to its guest port, TCP and UDP; bad forms and two -p of one host port
// are one-line usage errors before anything runs.
func TestPublishRanges(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		p := e.startPortServer(t, ctx, []string{
			"-p", "127.0.0.1:21000-21002:8000-8002",
			"-p", "127.0.0.1:22000-22001/udp",
			"-p", "127.0.0.1:23000",
		}, "tcp:0.0.0.0:8000", "tcp:0.0.0.0:8001", "tcp:0.0.0.0:8002", "udp:0.0.0.0:22000", "udp:0.0.0.0:22001", "tcp:0.0.0.0:23000")
		for i := range 3 {
			e.wantReply(t, p.slirpProc, "tcp", fmt.Sprintf("127.0.0.1:%d", 21000+i), fmt.Sprintf("%d 10.0.2.2:", 8000+i))
		}
		for i := range 2 {
			e.wantReply(t, p.slirpProc, "udp", fmt.Sprintf("127.0.0.1:%d", 22000+i), fmt.Sprintf("%d 10.0.2.2:", 22000+i))
		}
		e.wantReply(t, p.slirpProc, "tcp", "127.0.0.1:23000", "23000 10.0.2.2:")
		p.finish(t)

		for _, tc := range []struct {
			flags []string
			want  string
		}{
			{[]string{"-p", "8000-8010:80-89"}, `invalid publish "8000-8010:80-89": host ports 8000-8010 (11) and guest ports 80-89 (10): ranges of unequal length`},
			{[]string{"-p", "8010-8000"}, `range ends before it starts`},
			{[]string{"-p", "127.0.0.1:9000:80", "-p", "9000:81"}, `-p 127.0.0.1:9000:80 and -p 9000:81 both publish host port 9000/tcp`},
			{[]string{"-p", "9000-9100/udp", "-p", "127.0.0.1:9050-9060:50-60/udp"}, `-p 9000-9100/udp and -p 127.0.0.1:9050-9060:50-60/udp both publish host port 9050/udp`},
		} {
			r := e.run(tc.flags, "port-server")
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.status != 2 || strings.Contains(r.stdout, "READY") || len(lines) != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%v: status %d, stdout %q, stderr %q; want status 2 and one line with %q", tc.flags, r.status, r.stdout, r.stderr, tc.want)
			}
		}
	})
}

// TestPublishAuto: with -p 127.0.0.1:auto, what the container listens on
// is published on the same host port within a bounded wait, TCP and UDP,
// a dual-stack socket included; a socket on the container's loopback is
// not; a host port in use is skipped with one warning and published once
// free; explicit forwards win (a -p of the guest port, an API forward of
// the host port); a closed socket's port is withdrawn. list_hostfwd and
// `rootlessnet ports` show each port's source.
func TestPublishAuto(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		sock := filepath.Join(e.scratch, "api.sock")
		busy, err := e.w.Listen("tcp", "127.0.0.1:25001")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		p := e.startPortServer(t, ctx, []string{"-p", "127.0.0.1:auto", "-p", "127.0.0.1:25000:7000", "-a", sock}, "tcp:0.0.0.0:7000")
		p.do(t, "listen tcp 127.0.0.1:25004") // the container's loopback only
		p.do(t, "listen tcp 0.0.0.0:25001")   // the host port is in use
		p.do(t, "listen tcp [::]:25002")      // dual-stack: reached through 10.0.2.100
		p.do(t, "listen udp 0.0.0.0:25003")
		p.do(t, "listen tcp 0.0.0.0:25005")
		e.wantReply(t, p.slirpProc, "tcp", "127.0.0.1:25002", "25002 10.0.2.2:")
		e.wantReply(t, p.slirpProc, "udp", "127.0.0.1:25003", "25003 10.0.2.2:")
		e.wantReply(t, p.slirpProc, "tcp", "127.0.0.1:25005", "25005 10.0.2.2:")
		e.wantReply(t, p.slirpProc, "tcp", "127.0.0.1:25000", "7000 10.0.2.2:")
		if !p.stderr.waitFor("automatic port not published", p.slirpProc, 15*time.Second) {
			t.Fatalf("no warning for the host port in use\n%s", p.output())
		}

		// The poll that published 25005 saw 25004 and 7000 too.
		list := func() map[string]map[string]any {
			out := map[string]map[string]any{}
			for _, en := range slirpListHostfwd(t, sock) {
				m, _ := en.(map[string]any)
				out[fmt.Sprintf("%v/%v", m["host_port"], m["proto"])] = m
			}
			return out
		}
		entries := list()
		for key, want := range map[string]string{"25000/tcp": "flag 7000", "25002/tcp": "auto 25002", "25003/udp": "auto 25003", "25005/tcp": "auto 25005"} {
			m := entries[key]
			if got := fmt.Sprintf("%v %v", m["source"], m["guest_port"]); got != want || m["host_addr"] != "127.0.0.1" || m["guest_addr"] != "10.0.2.100" {
				t.Errorf("list_hostfwd entry of %s: %v, want source and guest port %s, 127.0.0.1 -> 10.0.2.100", key, m, want)
			}
		}
		for _, key := range []string{"25001/tcp", "25004/tcp", "7000/tcp"} {
			if m, ok := entries[key]; ok {
				t.Errorf("list_hostfwd has %s: %v", key, m)
			}
		}

		// rootlessnet ports says the same.
		out, err := e.command(ctx, "ports", "-a", sock).CombinedOutput()
		if err != nil {
			t.Fatalf("rootlessnet ports: %v\n%s", err, out)
		}
		var rows []string
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 5 {
				rows = append(rows, strings.Join(f[1:], " "))
			}
		}
		for _, want := range []string{"PROTO HOST GUEST SOURCE", "tcp 127.0.0.1:25000 10.0.2.100:7000 flag", "tcp 127.0.0.1:25002 10.0.2.100:25002 auto", "udp 127.0.0.1:25003 10.0.2.100:25003 auto"} {
			if !slices.Contains(rows, want) {
				t.Errorf("rootlessnet ports printed\n%s\nwithout a row %q", out, want)
			}
		}

		// An API forward of an automatic port's host port takes it over.
		slirpAddHostfwd(t, sock, "127.0.0.1", 25002, 7000)
		e.wantReply(t, p.slirpProc, "tcp", "127.0.0.1:25002", "7000 10.0.2.2:")
		if m := list()["25002/tcp"]; m["source"] != "api" {
			t.Errorf("after add_hostfwd of host port 25002: %v, want source api", m)
		}

		// Closed sockets: their ports are withdrawn.
		p.do(t, "close tcp 0.0.0.0:25005")
		p.do(t, "close udp 0.0.0.0:25003")
		if err := eventually(15*time.Second, func() error {
			entries := list()
			if _, ok := entries["25005/tcp"]; ok {
				return errors.New("25005/tcp still listed")
			}
			if _, ok := entries["25003/udp"]; ok {
				return errors.New("25003/udp still listed")
			}
			return nil
		}); err != nil {
			t.Fatalf("after the sockets closed: %v\n%s", err, p.output())
		}
		if _, err := e.slirpWhoami("127.0.0.1:25005", ""); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dialing a withdrawn port: %v, want connection refused", err)
		}
		if pc, err := e.w.ListenPacket("udp", "127.0.0.1:25003"); err != nil {
			t.Errorf("the withdrawn UDP port is still bound: %v", err)
		} else {
			pc.Close()
		}

		// The busy host port is published once free; one warning in all.
		busy.Close()
		e.wantReply(t, p.slirpProc, "tcp", "127.0.0.1:25001", "25001 10.0.2.2:")
		if n := strings.Count(p.stderr.String(), "automatic port not published"); n != 1 {
			t.Errorf("%d warnings for the busy port, want 1\n%s", n, p.output())
		}
		p.finish(t)
	})
}

// TestPublishAutoFamilies: with -6 and -p [::1]:auto/tcp, an IPv6-only
// socket is reached through fd00::100 and an IPv4 one through
// 10.0.2.100; a low port is published as root and, unprivileged,
// skipped with one warning (permission denied, not a crash).
func TestPublishAutoFamilies(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		p := e.startPortServer(t, ctx, []string{"-6", "-p", "[::1]:auto/tcp"}, "tcp6:[::]:26000", "tcp4:0.0.0.0:26001", "tcp:0.0.0.0:80")
		e.wantReply(t, p.slirpProc, "tcp", "[::1]:26000", "26000 [fd00::2]:")
		e.wantReply(t, p.slirpProc, "tcp", "[::1]:26001", "26001 10.0.2.2:")
		if e.cred == nil {
			e.wantReply(t, p.slirpProc, "tcp", "[::1]:80", "80 ")
		} else {
			if !p.stderr.waitFor("automatic port not published", p.slirpProc, 15*time.Second) {
				t.Fatalf("no warning for port 80 as an unprivileged user\n%s", p.output())
			}
			if errOut := p.stderr.String(); !strings.Contains(errOut, "[::1]:80:") || !strings.Contains(errOut, "permission denied") {
				t.Errorf("the warning does not name [::1]:80 and permission denied\n%s", p.output())
			}
		}
		p.finish(t)
	})
}

// TestPublishAutoSlirpForm: -p auto in the slirp4netns form, with the
// sandbox and seccomp (the sock_diag socket goes through the sandbox's
// re-execution).
func TestPublishAutoSlirpForm(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		pid, cp, ctrIn := e.containerAs(t, ctx, "auto-newns")
		rp := e.slirpStart(t, e.command(ctx, "--resolv-conf", e.w.ResolvConf(), "--enable-sandbox", "--enable-seccomp",
			"-c", "-p", "127.0.0.1:auto/tcp", strconv.Itoa(pid), "tap0"))
		if !cp.stdout.waitFor("READY", cp, 20*time.Second) {
			t.Fatalf("the container never saw tap0 configured\ncontainer %s\nrootlessnet %s", cp.output(), rp.output())
		}
		e.wantReply(t, rp, "tcp", "127.0.0.1:8080", "8080 10.0.2.2:")
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

// ---------------------------------------------------------------------
// Container side.

func portServer(args []string) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	open := map[string]io.Closer{}
	defer func() {
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	listen := func(network, addr string) error {
		key := network + " " + addr
		if network == "udpecho" {
			// Echoes each datagram as it came.
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			pc.(*net.UDPConn).SetReadBuffer(1 << 20)
			open[key] = pc
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 64<<10)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
			return nil
		}
		if strings.HasPrefix(network, "udp") {
			pc, err := net.ListenPacket(network, addr)
			if err != nil {
				return err
			}
			port := pc.LocalAddr().(*net.UDPAddr).Port
			open[key] = pc
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 2048)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo([]byte(fmt.Sprintf("%d %s", port, from)), from)
				}
			}()
			return nil
		}
		l, err := net.Listen(network, addr)
		if err != nil {
			return err
		}
		open[key] = l
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				local := c.LocalAddr().(*net.TCPAddr).Port
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(c, "%d %s\n", local, c.RemoteAddr())
				c.Close()
			}
		}()
		return nil
	}
	for _, a := range args {
		network, addr, _ := strings.Cut(a, ":")
		mu.Lock()
		err := listen(network, addr)
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	fmt.Println("READY")
	sc := bufio.NewScanner(os.Stdin)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		var err error
		mu.Lock()
		switch {
		case len(f) == 3 && f[0] == "listen":
			err = listen(f[1], f[2])
		case len(f) == 3 && f[0] == "close":
			key := f[1] + " " + f[2]
			if c, ok := open[key]; ok {
				err = c.Close()
				delete(open, key)
			} else {
				err = fmt.Errorf("nothing open on %s", key)
			}
		default:
			err = fmt.Errorf("unknown command %q", sc.Text())
		}
		mu.Unlock()
		if err != nil {
			fmt.Printf("FAILED %v\n", err)
		}
		fmt.Printf("DONE %d\n", n)
	}
	return sc.Err()
}
