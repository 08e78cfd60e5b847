package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
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
	extraHelpers["net-server"] = netServer
	extraHelpers["net-client"] = func(args []string) error { return netClient(args[0], args[1]) }
	extraHelpers["net-lookup"] = netLookup
	extraHelpers["net-bulk"] = func(args []string) error {
		own, err := ownAddress()
		if err != nil {
			return err
		}
		size, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		return netEcho(net.JoinHostPort(args[0], fmt.Sprint(netPort)), own, size)
	}
	extraHelpers["newns-net"] = func([]string) error { return newNSMode("net-attached") }
	extraHelpers["net-attached"] = netAttached
}

// netAttached is a container made by another launcher (new user and
// network namespaces of its own): it prints its pid, waits for tap0 to be
// configured, then serves as net-server.
func netAttached(args []string) error {
	fmt.Printf("PID %d\n", os.Getpid())
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := ownAddress(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("tap0 was never configured")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return netServer(args)
}

// netPort is where net-server listens, TCP and UDP.
const netPort = 7000

// netServer is a member's server: TCP and UDP on netPort answer "FROM
// CLIENT" then echo. It prints LISTENING, then runs the commands it reads
// on stdin ("connect TARGET WANTIP": netClient, answered OK or ERR)
// until stdin ends.
func netServer([]string) error {
	tl, err := net.Listen("tcp", fmt.Sprintf(":%d", netPort))
	if err != nil {
		return err
	}
	defer tl.Close()
	ul, err := net.ListenPacket("udp", fmt.Sprintf(":%d", netPort))
	if err != nil {
		return err
	}
	defer ul.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "FROM %s\n", c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			ul.WriteTo(append([]byte("FROM "+from.String()+" "), buf[:n]...), from)
		}
	}()
	fmt.Println("LISTENING")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "connect" {
			if err := netClient(f[1], f[2]); err != nil {
				fmt.Println("ERR", err)
			} else {
				fmt.Println("OK")
			}
		}
	}
	return nil
}

// netClient checks a member's reach of another: target (a name or an
// address) resolves to wantIP; TCP and UDP to it on netPort see this
// member's own address as the client (no NAT between members), 1 MiB
// echoes intact; and wantIP answers a ping.
func netClient(target, wantIP string) error {
	own, err := ownAddressOf(strings.Contains(wantIP, ":"))
	if err != nil {
		return err
	}
	if _, err := netip.ParseAddr(target); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		addrs, err := net.DefaultResolver.LookupHost(ctx, target)
		cancel()
		if err != nil {
			return fmt.Errorf("resolving %s: %w", target, err)
		}
		if !strings.Contains(" "+strings.Join(addrs, " ")+" ", " "+wantIP+" ") {
			return fmt.Errorf("%s resolved to %v, want %s", target, addrs, wantIP)
		}
	}
	addr := net.JoinHostPort(target, fmt.Sprint(netPort))
	if err := netEcho(addr, own, 1<<20); err != nil {
		return err
	}
	u, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer u.Close()
	buf := make([]byte, 2048)
	var reply string
	for try := 0; try < 5 && reply == ""; try++ {
		u.Write([]byte("hello"))
		u.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := u.Read(buf); err == nil {
			reply = string(buf[:n])
		}
	}
	if !strings.HasPrefix(reply, "FROM "+own+":") || !strings.HasSuffix(reply, " hello") {
		return fmt.Errorf("udp reply %q, want FROM %s:PORT hello", reply, own)
	}
	return ping(wantIP)
}

// netEcho sends size bytes to a net-server at addr, which must see the
// client as own, and checks that the same bytes come back (SHA-256).
func netEcho(addr, own string, size int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil {
		return fmt.Errorf("tcp greeting: %w", err)
	}
	if !strings.HasPrefix(line, "FROM "+own+":") {
		return fmt.Errorf("the server saw the client as %q, want %s", strings.TrimSpace(line), own)
	}
	data := pattern(size)
	want := sha256.Sum256(data)
	go c.Write(data)
	h := sha256.New()
	if n, err := io.CopyN(h, rd, int64(size)); err != nil {
		return fmt.Errorf("tcp echo after %d bytes: %w", n, err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("tcp echo: the bytes differ")
	}
	return nil
}

// ownAddress is eth0's IPv4 address (a member's), or tap0's (an attached
// namespace's).
func ownAddress() (string, error) { return ownAddressOf(false) }

// ownAddressOf is eth0's (or tap0's) IPv4 address, or its global IPv6 one
// as it shows in a socket address ("[fd89::a]").
func ownAddressOf(v6 bool) (string, error) {
	ifi, err := net.InterfaceByName("eth0")
	if err != nil {
		if ifi, err = net.InterfaceByName("tap0"); err != nil {
			return "", err
		}
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		switch {
		case !ok:
		case !v6 && ipn.IP.To4() != nil:
			return ipn.IP.String(), nil
		case v6 && ipn.IP.To4() == nil && ipn.IP.IsGlobalUnicast():
			return "[" + ipn.IP.String() + "]", nil
		}
	}
	return "", fmt.Errorf("no address (IPv6: %v) on the member's link", v6)
}

// netLookup prints what the name resolves to, or NXDOMAIN.
func netLookup(args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, args[0])
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		fmt.Println("NXDOMAIN")
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Println("ADDRS", strings.Join(addrs, " "))
	return nil
}

// netEnv runs rootlessnet's network commands for one env, with a state
// directory of its own.
type netEnv struct {
	*env
	xdg string
}

func newNetEnv(t *testing.T, e *env) *netEnv {
	xdg := filepath.Join(e.scratch, "xdg")
	if err := os.Mkdir(xdg, 0o700); err != nil {
		t.Fatal(err)
	}
	if e.cred != nil {
		os.Chown(xdg, int(e.cred.Uid), int(e.cred.Gid))
	}
	ne := &netEnv{env: e, xdg: xdg}
	t.Cleanup(func() { ne.cleanup(t) })
	return ne
}

func (ne *netEnv) cmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := ne.command(ctx, args...)
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+ne.xdg)
	return cmd
}

// rn runs a rootlessnet command to its end.
func (ne *netEnv) rn(args ...string) result {
	ne.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := ne.cmd(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := ne.w.Start(cmd); err != nil {
		ne.t.Fatal(err)
	}
	err := cmd.Wait()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.status = ee.ExitCode()
	} else if err != nil {
		ne.t.Fatalf("rootlessnet %v: %v", args, err)
	}
	return r
}

func (ne *netEnv) mustRN(args ...string) string {
	ne.t.Helper()
	r := ne.rn(args...)
	if r.status != 0 {
		ne.t.Fatalf("rootlessnet %s: status %d\n%s%s", strings.Join(args, " "), r.status, r.stdout, r.stderr)
	}
	return r.stdout
}

// member runs helper mode as a member and returns when it ended.
func (ne *netEnv) member(flags []string, mode string, args ...string) result {
	ne.t.Helper()
	return ne.rn(append(append([]string{"run"}, flags...), "--", "env", helperEnv+"="+mode, "RLN_ARGS="+strings.Join(args, " "), ne.helper)...)
}

// server is a long-lived member running net-server.
type server struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	mu    sync.Mutex
	out   *bytes.Buffer
	done  chan error
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (ne *netEnv) startServer(t *testing.T, flags ...string) *server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	args := append(append([]string{"run"}, flags...), "--", ne.helper)
	cmd := ne.cmd(ctx, args...)
	cmd.Env = append(cmd.Env, helperEnv+"=net-server")
	s := &server{cmd: cmd, lines: make(chan string, 64), out: new(bytes.Buffer), done: make(chan error, 1)}
	var err error
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &s.mu, w: s.out}
	if err := ne.w.Start(cmd); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		s.stdin.Close()
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-s.done
		}
		cancel()
	})
	if line := s.next(t, 30*time.Second); line != "LISTENING" {
		t.Fatalf("member server said %q\n%s", line, s.output())
	}
	return s
}

func (s *server) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			return "(ended)"
		}
		return l
	case <-time.After(d):
		t.Fatalf("no line from the member within %v\n%s", d, s.output())
	}
	return ""
}

// connect has the server member check its reach of target.
func (s *server) connect(t *testing.T, target, wantIP string) {
	t.Helper()
	fmt.Fprintf(s.stdin, "connect %s %s\n", target, wantIP)
	if line := s.next(t, time.Minute); line != "OK" {
		t.Errorf("member -> %s: %s", target, line)
	}
}

// connectEventually retries connect until it works, within d: for names
// that take a moment to arrive (an overlay's gossip).
func (s *server) connectEventually(t *testing.T, target, wantIP string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		fmt.Fprintf(s.stdin, "connect %s %s\n", target, wantIP)
		line := s.next(t, time.Minute)
		if line == "OK" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("member -> %s: %s", target, line)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type netStatus struct {
	Name    string `json:"name"`
	Subnet  string `json:"subnet"`
	Subnet6 string `json:"subnet6"`
	Gateway string `json:"gateway"`
	DNS     string `json:"dns"`
	Running bool   `json:"running"`
	Pid     int    `json:"pid"`
	Members []struct {
		Name     string   `json:"name"`
		Address  string   `json:"address"`
		Address6 string   `json:"address6"`
		Ports    []string `json:"ports"`
	} `json:"members"`
}

func (ne *netEnv) inspect(name string) netStatus {
	ne.t.Helper()
	var st netStatus
	out := ne.mustRN("network", "inspect", name)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		ne.t.Fatalf("inspect: %v\n%s", err, out)
	}
	return st
}

func (st netStatus) addr(t *testing.T, member string) string {
	t.Helper()
	for _, m := range st.Members {
		if m.Name == member {
			return m.Address
		}
	}
	t.Fatalf("network %s has no member %s: %+v", st.Name, member, st.Members)
	return ""
}

// waitMember waits until inspect lists the member.
func (ne *netEnv) waitMember(name, member string) netStatus {
	ne.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := ne.inspect(name)
		for _, m := range st.Members {
			if m.Name == member {
				return st
			}
		}
		if time.Now().After(deadline) {
			ne.t.Fatalf("member %s never joined %s", member, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanup removes every network of the env and checks that no process of
// theirs is left.
func (ne *netEnv) cleanup(t *testing.T) {
	var all []netStatus
	r := ne.rn("network", "ls", "--format", "json")
	json.Unmarshal([]byte(r.stdout), &all)
	for _, st := range all {
		ne.rn("network", "rm", "-f", st.Name)
		if st.Pid > 0 {
			waitGone(t, st.Pid)
		}
	}
}

// waitGone waits (bounded) for a process to end, and fails if it does not.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); bytes.Contains(b, []byte(") Z ")) {
			return // a zombie of a reaper that is not ours: gone
		}
		if time.Now().After(deadline) {
			t.Errorf("process %d is still there", pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hubsOf lists the hub children (rootlessnet-hub) whose parent is pid.
func hubsOf(t *testing.T, pid int) []int {
	var hubs []int
	for _, c := range childPids(t, pid) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c)); strings.HasPrefix(string(b), "rootlessnet-hub") {
			hubs = append(hubs, c)
		}
	}
	return hubs
}

// TestNetworkMembers: members of one network reach each other by name
// and by address, both ways, over TCP, UDP and ping, as themselves (the
// kernel bridge, no NAT); they reach the world through NAT and resolve
// its names; a published port reaches its member with the client's
// address kept; another network's members neither resolve nor answer;
// rm is refused while members run and -f stops them.
func TestNetworkMembers(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ne := newNetEnv(t, e)
		echo := e.w.TCPEcho(t, "198.51.100.1:0")
		e.w.DNS(t, "198.51.100.1:53")
		if out := ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf()); strings.TrimSpace(out) != "n1" {
			t.Fatalf("create printed %q", out)
		}
		db := ne.startServer(t, "--network", "n1", "--name", "db")
		web := ne.startServer(t, "--network", "n1", "--name", "web", "-p", fmt.Sprintf("%d:%d", 18080, netPort))
		st := ne.waitMember("n1", "web")
		dbIP, webIP := st.addr(t, "db"), st.addr(t, "web")
		if !strings.HasPrefix(dbIP, "10.89.0.") || st.Gateway != "10.89.0.1" || st.DNS != "10.89.0.2" {
			t.Fatalf("inspect: %+v", st)
		}
		db.connect(t, "web", webIP)
		db.connect(t, "web.n1", webIP)
		web.connect(t, "db", dbIP)
		web.connect(t, dbIP, dbIP)

		// The outside world through NAT, and its names.
		if r := ne.member([]string{"--network", "n1"}, "tcp-echo", echo.String(), "65536"); r.status != 0 || !strings.Contains(r.stdout, "OK") {
			t.Errorf("member -> world: %d\n%s%s", r.status, r.stdout, r.stderr)
		}
		// Names over UDP and TCP: the world's from its server, the
		// members' from the network.
		r := ne.member([]string{"--network", "n1"}, "dns", "10.89.0.2:53", world.DNSName)
		for _, proto := range []string{"udp", "tcp"} {
			if !strings.Contains(r.stdout, proto+" rcode=NOERROR A=198.51.100.7") {
				t.Errorf("member's DNS over %s for a world name: %d\n%s%s", proto, r.status, r.stdout, r.stderr)
			}
		}
		r = ne.member([]string{"--network", "n1"}, "dns", "10.89.0.2:53", "db.n1.")
		for _, proto := range []string{"udp", "tcp"} {
			if !strings.Contains(r.stdout, proto+" rcode=NOERROR A="+dbIP) {
				t.Errorf("member's DNS over %s for db.n1: %d\n%s%s", proto, r.status, r.stdout, r.stderr)
			}
		}

		// A published port, from the world's address: the member sees it.
		var got string
		err := e.w.Do(func() error {
			c, err := net.DialTimeout("tcp", "198.51.100.1:18080", 10*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got, err = bufio.NewReader(c).ReadString('\n')
			return err
		})
		if err != nil || !strings.HasPrefix(got, "FROM 198.51.100.1:") {
			t.Errorf("published port: %q, %v (want the world's address kept)", got, err)
		}

		// Another network: its own subnet; n1's names and members are
		// out of its reach.
		ne.mustRN("network", "create", "n2", "--resolv-conf", e.w.ResolvConf())
		if st2 := ne.inspect("n2"); st2.Subnet == st.Subnet {
			t.Fatalf("n2 got n1's subnet %s", st2.Subnet)
		}
		if r := ne.member([]string{"--network", "n2"}, "net-lookup", "db.n1"); strings.Contains(r.stdout, dbIP) {
			t.Errorf("n1's member resolves from n2: %s", r.stdout)
		}
		if r := ne.member([]string{"--network", "n2"}, "net-lookup", "db"); strings.Contains(r.stdout, dbIP) {
			t.Errorf("n1's member resolves from n2: %s", r.stdout)
		}
		if r := ne.member([]string{"--network", "n2"}, "net-client", dbIP, dbIP); r.status == 0 {
			t.Errorf("n2's member reached n1's member at %s:\n%s", dbIP, r.stdout)
		}

		// ls lists both, with n1's members.
		ls := ne.mustRN("network", "ls")
		if !strings.Contains(ls, "n1") || !strings.Contains(ls, "db,web") || !strings.Contains(ls, "n2") {
			t.Errorf("network ls:\n%s", ls)
		}
		// rm refuses while members run, names them; -f stops them.
		if r := ne.rn("network", "rm", "n1"); r.status == 0 || !strings.Contains(r.stderr, "db, web") {
			t.Errorf("rm with members: %d %s", r.status, r.stderr)
		}
		pid := ne.inspect("n1").Pid
		ne.mustRN("network", "rm", "-f", "n1")
		for _, s := range []*server{db, web} {
			select {
			case err := <-s.done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 143 {
					t.Errorf("a member stopped by rm -f exited %v, want 143", err)
				}
				s.done <- err // for the cleanup
			case <-time.After(20 * time.Second):
				t.Errorf("rm -f did not stop a member")
			}
		}
		waitGone(t, pid)
		if r := ne.rn("network", "inspect", "n1"); r.status == 0 {
			t.Errorf("n1 still there after rm -f")
		}
		ne.mustRN("network", "rm", "n2")
	})
}

// TestNetworkUDPPastStack: a network's UDP flows, its DNS queries and its
// published UDP ports skip the netstack as run's do, the link knowing
// each member's MAC by its address: three members at once exchange runs
// of datagrams and streams with the world and make lookups, each getting
// its own answers (one sent to another member's MAC would be lost), and
// a published UDP port reaches its member and back with the client's
// address kept.
func TestNetworkUDPPastStack(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ne := newNetEnv(t, e)
		echo := e.w.UDPEcho(t, "198.51.100.1:0")
		e.w.DNS(t, "198.51.100.1:53")
		ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
		ne.startServer(t, "--network", "n1", "--name", "udpsrv", "-p", fmt.Sprintf("%d:%d/udp", 18081, netPort))
		ne.waitMember("n1", "udpsrv")
		jobs := [][]string{
			{"udp-runs", echo.String()},
			{"udp-stream", echo.String()},
			{"dns-many", "10.89.0.2:53", world.DNSName, "100", "20"},
		}
		const members = 3
		var wg sync.WaitGroup
		errs := make(chan string, members*len(jobs))
		for i := range members {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, j := range jobs {
					r := ne.member([]string{"--network", "n1", "--name", fmt.Sprintf("u%d", i)}, j[0], j[1:]...)
					if r.status != 0 || !strings.Contains(r.stdout, "OK") {
						errs <- fmt.Sprintf("member u%d, %s: %d\n%s%s", i, j[0], r.status, r.stdout, r.stderr)
					}
				}
			}()
		}
		// The published port while they run: each datagram answered.
		for i := range 20 {
			var got string
			err := e.w.Do(func() error {
				c, err := net.Dial("udp", "198.51.100.1:18081")
				if err != nil {
					return err
				}
				defer c.Close()
				msg := fmt.Sprintf("hello %d", i)
				for try := 0; try < 5; try++ {
					if _, err := c.Write([]byte(msg)); err != nil {
						return err
					}
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					b := make([]byte, 2048)
					n, err := c.Read(b)
					if err == nil {
						got = string(b[:n])
						return nil
					}
				}
				return errors.New("no answer to 5 datagrams")
			})
			if err != nil || !strings.HasPrefix(got, "FROM 198.51.100.1:") || !strings.HasSuffix(got, fmt.Sprintf(" hello %d", i)) {
				t.Errorf("published UDP port, datagram %d: %q, %v (want the world's address kept and the datagram back)", i, got, err)
				break
			}
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})
}

// TestNetworkCrash: the network's process killed with SIGKILL takes its
// hub with it (no namespace or process left); its member lives on without
// the network; ls says the network is dead, a run --network names the
// way out, rm cleans up and the same name can be created again.
func TestNetworkCrash(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ne := newNetEnv(t, e)
		ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
		db := ne.startServer(t, "--network", "n1", "--name", "db")
		st := ne.waitMember("n1", "db")
		hubs := hubsOf(t, st.Pid)
		if len(hubs) != 1 {
			t.Fatalf("the network's process %d has hubs %v, want one", st.Pid, hubs)
		}
		syscall.Kill(st.Pid, syscall.SIGKILL)
		waitGone(t, st.Pid)
		waitGone(t, hubs[0])
		// The member runs on, and says it lost the network.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(db.output(), "lost the network") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(db.output(), "lost the network") {
			t.Errorf("the member did not say it lost the network:\n%s", db.output())
		}
		select {
		case err := <-db.done:
			t.Errorf("the member ended with its network: %v", err)
			db.done <- err
		default:
		}
		if ls := ne.mustRN("network", "ls"); !strings.Contains(ls, "dead") {
			t.Errorf("ls after the crash:\n%s", ls)
		}
		if r := ne.rn("run", "--network", "n1", "--", "true"); r.status == 0 || !strings.Contains(r.stderr, "network rm n1") {
			t.Errorf("joining a dead network: %d %s", r.status, r.stderr)
		}
		ne.mustRN("network", "rm", "n1")
		if ls := ne.mustRN("network", "ls"); strings.Contains(ls, "n1") {
			t.Errorf("rm left n1:\n%s", ls)
		}
		// The same name again, and a crashed network's name taken over
		// by create without rm.
		ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
		pid := ne.inspect("n1").Pid
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid)
		ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
		if r := ne.member([]string{"--network", "n1", "--name", "x"}, "net-lookup", "x"); !strings.Contains(r.stdout, "ADDRS 10.89.0.") {
			t.Errorf("a member of the new n1: %d\n%s%s", r.status, r.stdout, r.stderr)
		}
	})
}

// TestNetworkBadInput: each mistake is a one-line error naming its cause,
// and leaves nothing behind.
func TestNetworkBadInput(t *testing.T) {
	e := newEnv(t, world.Nobody)
	ne := newNetEnv(t, e)
	ne.mustRN("network", "create", "n1", "--subnet", "10.90.0.0/24", "--resolv-conf", e.w.ResolvConf())
	ne.startServer(t, "--network", "n1", "--name", "db", "--ip", "10.90.0.50")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "create", "n1"}, "network n1 already exists"},
		{[]string{"network", "create", "bad/name"}, "invalid network name"},
		{[]string{"network", "create", "n2", "--subnet", "10.90.0.128/25"}, "overlaps network n1's 10.90.0.0/24"},
		{[]string{"network", "create", "n2", "--subnet", "10.0.2.0/24"}, "overlaps 10.0.2.0/24"},
		{[]string{"network", "create", "n2", "--subnet", "10.91.0.1/24"}, "invalid --subnet"},
		{[]string{"network", "create", "n2", "--mtu", "100"}, "invalid --mtu"},
		{[]string{"network", "inspect", "nope"}, "no network named nope"},
		{[]string{"network", "rm", "nope"}, "no network named nope"},
		{[]string{"network", "frob"}, "unknown command"},
		{[]string{"run", "--network", "nope", "--", "true"}, "no network named nope"},
		{[]string{"run", "--network", "n1", "--name", "db", "--", "true"}, "the name db is taken on network n1"},
		{[]string{"run", "--network", "n1", "--ip", "10.90.0.50", "--", "true"}, "--ip 10.90.0.50 is in use"},
		{[]string{"run", "--network", "n1", "--ip", "10.91.0.5", "--", "true"}, "not a host address of network n1"},
		{[]string{"run", "--network", "n1", "--ip", "10.90.0.1", "--", "true"}, "gateway or DNS address"},
		{[]string{"run", "--network", "n1", "--name", "a b", "--", "true"}, "invalid member name"},
		{[]string{"run", "--network", "n1", "--cidr", "10.1.0.0/24", "--", "true"}, "--cidr is the network's to set"},
		{[]string{"run", "--name", "x", "--", "true"}, "--name and --ip need --network"},
	} {
		r := ne.rn(c.args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.status == 0 || !strings.Contains(r.stderr, c.want) || len(lines) != 1 {
			t.Errorf("%v: status %d, stderr %q; want one line with %q", c.args, r.status, r.stderr, c.want)
		}
	}
	// Nothing was left: one network, one member.
	st := ne.inspect("n1")
	if len(st.Members) != 1 {
		t.Errorf("members after the mistakes: %+v", st.Members)
	}
	var all []netStatus
	json.Unmarshal([]byte(ne.mustRN("network", "ls", "--format", "json")), &all)
	if len(all) != 1 {
		t.Errorf("networks after the mistakes: %+v", all)
	}
}

// TestNetworkManyMembers: 50 members join in parallel, each resolving its
// own name to its own address, and all leave: their names and addresses
// are free again.
func TestNetworkManyMembers(t *testing.T) {
	e := newEnv(t, world.Nobody)
	ne := newNetEnv(t, e)
	ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
	const members = 50
	var wg sync.WaitGroup
	errs := make(chan string, members)
	start := time.Now()
	for i := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("m%d", i)
			r := ne.member([]string{"--network", "n1", "--name", name}, "net-lookup", name)
			if r.status != 0 || !strings.Contains(r.stdout, "ADDRS 10.89.0.") {
				errs <- fmt.Sprintf("%s: %d %s%s", name, r.status, r.stdout, r.stderr)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	t.Logf("%d members joined, resolved themselves and left in %v", members, time.Since(start))
	if st := ne.inspect("n1"); len(st.Members) != 0 {
		t.Errorf("members left behind: %+v", st.Members)
	}
	// The first address is free again, and a name is free as soon as
	// its run has returned: the same name three times in a row.
	for i := 0; i < 3; i++ {
		if r := ne.member([]string{"--network", "n1", "--name", "again"}, "net-lookup", "again"); !strings.Contains(r.stdout, "ADDRS 10.89.0.10") {
			t.Errorf("run %d of the same name after all left: %d %s%s", i, r.status, r.stdout, r.stderr)
		}
	}
}

// TestNetworkAttach: a namespace made by another launcher (its own user
// namespace) joins a network with --netns PATH --network: members reach
// it by name, it reaches them by address, each sees the other's own
// address; it leaves when its namespace goes.
func TestNetworkAttach(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		ne := newNetEnv(t, e)
		ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
		db := ne.startServer(t, "--network", "n1", "--name", "db")

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		ctr := ne.commandPath(ctx, e.helper)
		ctr.Env = append(ctr.Env, helperEnv+"=newns-net")
		ctrIn, _ := ctr.StdinPipe()
		ctrOut, _ := ctr.StdoutPipe()
		// Buffers the processes write while the test reads them.
		var outMu sync.Mutex
		locked := func(b *bytes.Buffer) string {
			outMu.Lock()
			defer outMu.Unlock()
			return b.String()
		}
		var ctrErr bytes.Buffer
		ctr.Stderr = &lockedWriter{mu: &outMu, w: &ctrErr}
		if err := e.w.Start(ctr); err != nil {
			t.Fatal(err)
		}
		defer func() {
			ctrIn.Close()
			ctr.Process.Kill()
			ctr.Wait()
		}()
		rd := bufio.NewReader(ctrOut)
		line, _ := rd.ReadString('\n')
		var pid int
		if _, err := fmt.Sscanf(line, "PID %d", &pid); err != nil {
			t.Fatalf("container said %q: %s", line, locked(&ctrErr))
		}
		rn := ne.cmd(ctx, "--netns", fmt.Sprintf("/proc/%d/ns/net", pid), "--network", "n1", "--name", "ext")
		var rnOut, rnErr bytes.Buffer
		rn.Stdout, rn.Stderr = &lockedWriter{mu: &outMu, w: &rnOut}, &lockedWriter{mu: &outMu, w: &rnErr}
		if err := e.w.Start(rn); err != nil {
			t.Fatal(err)
		}
		rnDone := make(chan error, 1)
		go func() { rnDone <- rn.Wait() }()
		defer func() {
			rn.Process.Kill()
			<-rnDone
		}()
		if l, _ := rd.ReadString('\n'); strings.TrimSpace(l) != "LISTENING" {
			t.Fatalf("attached container said %q: %s\nrootlessnet: %s", l, locked(&ctrErr), locked(&rnErr))
		}
		st := ne.waitMember("n1", "ext")
		extIP, dbIP := st.addr(t, "ext"), st.addr(t, "db")
		db.connect(t, "ext", extIP)
		fmt.Fprintf(ctrIn, "connect %s %s\n", dbIP, dbIP)
		if l, _ := rd.ReadString('\n'); strings.TrimSpace(l) != "OK" {
			t.Errorf("attached -> db: %s", l)
		}
		if out := locked(&rnOut); !strings.Contains(out, "member ext of network n1: address "+extIP) {
			t.Errorf("rootlessnet printed %q", out)
		}
		// The namespace goes: the member leaves.
		ctrIn.Close()
		ctr.Wait()
		select {
		case <-rnDone:
			rnDone <- nil
		case <-time.After(20 * time.Second):
			t.Fatalf("rootlessnet did not leave when the namespace went")
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(ne.inspect("n1").Members) != 1 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if m := ne.inspect("n1").Members; len(m) != 1 {
			t.Errorf("members after the namespace went: %+v", m)
		}
	})
}

// TestNetworkMemberAutoPorts: -p auto on a member publishes what that
// member serves, to that member, shown by inspect; its end withdraws it.
func TestNetworkMemberAutoPorts(t *testing.T) {
	e := newEnv(t, world.Nobody)
	ne := newNetEnv(t, e)
	ne.mustRN("network", "create", "n1", "--resolv-conf", e.w.ResolvConf())
	ne.startServer(t, "--network", "n1", "--name", "other")
	s := ne.startServer(t, "--network", "n1", "--name", "auto", "-p", "127.0.0.1:auto/tcp")
	st := ne.waitMember("n1", "auto")
	autoIP := st.addr(t, "auto")
	addr := fmt.Sprintf("127.0.0.1:%d", netPort)
	greeting := func() (string, error) {
		var got string
		err := e.w.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			got, err = bufio.NewReader(c).ReadString('\n')
			return err
		})
		return got, err
	}
	var got string
	err := retryFor(15*time.Second, func() (err error) {
		got, err = greeting()
		return err
	})
	// A loopback client shows as the gateway, as in run.
	if err != nil || !strings.HasPrefix(got, "FROM 10.89.0.1:") {
		t.Fatalf("the automatic port: %q, %v\n%s", got, err, s.output())
	}
	var ports []string
	for _, m := range ne.inspect("n1").Members {
		if m.Name == "auto" {
			ports = m.Ports
		} else if len(m.Ports) != 0 {
			t.Errorf("member %s got ports %v", m.Name, m.Ports)
		}
	}
	if len(ports) != 1 || !strings.Contains(ports[0], autoIP) || !strings.HasSuffix(ports[0], "(auto)") {
		t.Errorf("inspect shows the auto member's ports as %v", ports)
	}
	// The member ends: its port goes.
	s.stdin.Close()
	<-s.done
	s.done <- nil
	if err := retryFor(15*time.Second, func() error {
		if _, err := greeting(); err == nil {
			return errors.New("still published")
		}
		return nil
	}); err != nil {
		t.Errorf("after the member ended: %v", err)
	}
}

// TestNetworkIPv6: with -6, members reach each other over IPv6 by
// address and by name (AAAA), and the world through the network's NAT
// over IPv6, the host's ::1 included through the gateway.
func TestNetworkIPv6(t *testing.T) {
	e := newEnv(t, world.Nobody)
	ne := newNetEnv(t, e)
	echo6 := e.w.TCPEcho(t, "["+world.UplinkV6+"]:0")
	lo6 := e.w.TCPEcho(t, "[::1]:0")
	ne.mustRN("network", "create", "n6", "-6", "--resolv-conf", e.w.ResolvConf())
	a := ne.startServer(t, "--network", "n6", "--name", "a")
	b := ne.startServer(t, "--network", "n6", "--name", "b")
	st := ne.waitMember("n6", "b")
	var a6, b6 string
	for _, m := range st.Members {
		switch m.Name {
		case "a":
			a6 = m.Address6
		case "b":
			b6 = m.Address6
		}
	}
	if !strings.HasPrefix(a6, "fd89:") || !strings.HasPrefix(b6, "fd89:") {
		t.Fatalf("members' IPv6 addresses: %+v", st.Members)
	}
	a.connect(t, b6, b6)
	b.connect(t, a6, a6)
	// By name, AAAA: the client resolves b to both families and dials
	// the first; the DNS answer itself is checked here.
	if r := ne.member([]string{"--network", "n6"}, "net-lookup", "b"); !strings.Contains(r.stdout, b6) {
		t.Errorf("b's AAAA: %s%s", r.stdout, r.stderr)
	}
	gw6 := strings.TrimSuffix(st.Subnet6, "/64") + "1"
	for _, c := range []struct{ what, addr string }{
		{"the world", echo6.String()},
		{"the host's ::1 through the gateway", fmt.Sprintf("[%s]:%d", gw6, lo6.Port())},
	} {
		if r := ne.member([]string{"--network", "n6"}, "tcp-echo", c.addr, fmt.Sprint(4<<20)); r.status != 0 || !strings.Contains(r.stdout, "OK") {
			t.Errorf("member -> %s over IPv6: %d\n%s%s", c.what, r.status, r.stdout, r.stderr)
		}
	}
}
