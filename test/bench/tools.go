package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// guestPort is where the iperf3 server listens inside the namespace for
// the published-port figures.
const guestPort = 5201

// tool is one network stack under test.
type tool struct {
	name string
	bin  string
	// start serves the namespace of s.pid at s.mtu and, when s.hostPort is
	// not 0, publishes 127.0.0.1:s.hostPort to guest port 5201.
	start func(s *session) (*proc, error)
	// gateway is the address through which the namespace reaches the
	// host's 127.0.0.1; "" means the namespace's default gateway.
	gateway string
	// bypass: start honours s.bypass (rootlessnet's --port-bypass).
	bypass bool
}

func newTools(rootlessnet, rootlessnetB string, extra, extraB []string, cfg *config) []*tool {
	tools := []*tool{
		rootlessnetTool("rootlessnet", rootlessnet, extra, cfg),
	}
	if rootlessnetB != "" {
		tools = append(tools, rootlessnetTool("rootlessnet-b", rootlessnetB, extraB, cfg))
	}
	return append(tools, peerTools()...)
}

// rootlessnetTool runs bin with extra flags; with cfg.profileDir it writes a CPU and an
// allocation profile per session there (uid 65534 must be able to).
func rootlessnetTool(name, bin string, extra []string, cfg *config) *tool {
	return &tool{name: name, bin: bin, gateway: "10.0.2.2", bypass: true, start: func(s *session) (*proc, error) {
		args := []string{"--netns", fmt.Sprintf("/proc/%d/ns/net", s.pid), "--mtu", fmt.Sprint(s.mtu), "--log-level", "error"}
		if s.bypass {
			args = append(args, "--port-bypass")
		}
		if s.hostPort != 0 {
			args = append(args, "-p", fmt.Sprintf("127.0.0.1:%d:%d/tcp", s.hostPort, guestPort))
			if s.pubUDP {
				args = append(args, "-p", fmt.Sprintf("127.0.0.1:%d:%d/udp", s.hostPort, guestPort))
			}
		}
		if s.resolvConf != "" {
			args = append(args, "--resolv-conf", s.resolvConf)
		}
		args = append(args, extra...)
		c := unprivileged(exec.Command(bin, args...))
		if cfg.profileDir != "" {
			if c.Env == nil {
				c.Env = os.Environ()
			}
			base := filepath.Join(cfg.profileDir, fmt.Sprintf("%s-%s-%d", name, s.kind, s.seq))
			c.Env = append(c.Env, "RLN_CPUPROFILE="+base+".cpu", "RLN_MEMPROFILE="+base+".allocs")
		}
		c.Stderr = s.stderr
		p, _, err := startWithLine(c, "serving", 15*time.Second)
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, s.stderr.tail())
		}
		if err := waitPublished(s, 5*time.Second); err != nil {
			p.stop(time.Second)
			return nil, err
		}
		return p, nil
	}}
}

// waitPublished waits until the session's published port listens on the
// host (TCP, and UDP with s.pubUDP); nothing to wait for without one.
func waitPublished(s *session, timeout time.Duration) error {
	if s.hostPort == 0 {
		return nil
	}
	if err := waitHostListening(s.hostPort, timeout); err != nil {
		return err
	}
	if s.pubUDP {
		return waitHostUDP(s.hostPort, timeout)
	}
	return nil
}

// Binaries of the two pastas: Debian 12's package (passt 2023-03-09), and
// passt 2025-05-03 (Debian 13's) built into /usr/local/bin by
// pasta-2025.sh (-install-pasta). Both are named by full path: PATH finds
// /usr/local/bin's first.
const (
	pastaBin     = "/usr/bin/pasta"
	pasta2025Bin = "/usr/local/bin/pasta"
)

// dnsAddr is where the -dns figures send a namespace's queries: the DNS
// address of rootlessnet and slirp4netns, and pasta's with --dns-forward.
const dnsAddr = "10.0.2.3"

// peerTools are the stacks rootlessnet is compared with.
func peerTools() []*tool {
	tools := []*tool{
		{name: "slirp4netns", bin: "slirp4netns", gateway: "10.0.2.2", start: func(s *session) (*proc, error) {
			api := filepath.Join(s.dir, "api.sock")
			c, err := toolCmd(s, "slirp4netns", "--configure", fmt.Sprintf("--mtu=%d", s.mtu), "--ready-fd=3", "--api-socket", api, fmt.Sprint(s.pid), "tap0")
			if err != nil {
				return nil, err
			}
			c.Stdout, c.Stderr = s.stderr, s.stderr
			p, err := startReadyFD(c, 15*time.Second)
			if err != nil {
				return nil, fmt.Errorf("%v: %s", err, s.stderr.tail())
			}
			if s.hostPort != 0 {
				protos := []string{"tcp"}
				if s.pubUDP {
					protos = append(protos, "udp")
				}
				for _, proto := range protos {
					if err := slirpAddHostfwd(api, proto, s.hostPort); err != nil {
						p.stop(time.Second)
						return nil, fmt.Errorf("add_hostfwd %s: %w", proto, err)
					}
				}
				if err := waitPublished(s, 5*time.Second); err != nil {
					p.stop(time.Second)
					return nil, err
				}
			}
			return p, nil
		}},
		pastaTool("pasta", pastaBin),
	}
	if _, err := os.Stat(pasta2025Bin); err == nil {
		tools = append(tools, pastaTool("pasta-2025", pasta2025Bin))
	}
	return tools
}

// defaultTools is -tools' default: every tool, pasta-2025 where
// /usr/local/bin/pasta exists.
func defaultTools() string {
	names := []string{"rootlessnet"}
	for _, t := range peerTools() {
		names = append(names, t.name)
	}
	return strings.Join(names, ",")
}

// pastaTool runs the pasta binary bin (Debian 12's or 2025's, the same
// options).
func pastaTool(name, bin string) *tool {
	return &tool{name: name, bin: bin, start: func(s *session) (*proc, error) {
		tfwd, ufwd := "none", "none"
		if s.hostPort != 0 {
			tfwd = fmt.Sprintf("127.0.0.1/%d:%d", s.hostPort, guestPort)
			if s.pubUDP {
				ufwd = tfwd
			}
		}
		args := []string{"--config-net", "--mtu", fmt.Sprint(s.mtu), "-f", "-q", "-t", tfwd, "-u", ufwd, "-T", "none", "-U", "none"}
		if s.resolvConf != "" {
			args = append(args, "--dns-forward", dnsAddr)
		}
		c, err := toolCmd(s, bin, append(args, fmt.Sprint(s.pid))...)
		if err != nil {
			return nil, err
		}
		c.Stdout, c.Stderr = s.stderr, s.stderr
		p, err := startProc(c)
		if err != nil {
			return nil, err
		}
		// pasta has no readiness signal: wait for the routes it
		// copies into the namespace, and for the published port.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if p.exited() {
				return nil, fmt.Errorf("pasta exited: %v: %s", p.err, s.stderr.tail())
			}
			if _, err := defaultGateway(s.pid); err == nil && (s.hostPort == 0 || hostListening(s.hostPort) && (!s.pubUDP || hostUDPBound(s.hostPort))) {
				return p, nil
			}
			if time.Now().After(deadline) {
				p.stop(time.Second)
				return nil, fmt.Errorf("pasta not ready after 10s: %s", s.stderr.tail())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}}
}

// toolCmd is a peer's command as uid 65534; with s.resolvConf, in a mount
// namespace of its own where that file is bind-mounted over
// /etc/resolv.conf (slirp4netns and pasta take their nameserver from
// there): unshare -m as root, then setpriv down to 65534 (no capability
// is left: all uids become non-zero; the uid change clears the parent
// death signal startProc set, so setpriv sets it again).
func toolCmd(s *session, bin string, args ...string) (*exec.Cmd, error) {
	if s.resolvConf == "" {
		return unprivileged(exec.Command(bin, args...)), nil
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("a resolv.conf of the bench's own needs root (a mount namespace with it bound over /etc/resolv.conf)")
	}
	script := `mount --bind "$0" /etc/resolv.conf && exec setpriv --reuid 65534 --regid 65534 --clear-groups --pdeathsig KILL -- "$@"`
	c := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script, s.resolvConf, bin}, args...)...)
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}
	return c, nil
}

// slirpAddHostfwd publishes 127.0.0.1:hostPort to the guest's port 5201
// (proto tcp or udp) through slirp4netns' JSON API (one request per
// connection).
func slirpAddHostfwd(sock, proto string, hostPort int) error {
	req := map[string]any{
		"execute": "add_hostfwd",
		"arguments": map[string]any{
			"proto": proto, "host_addr": "127.0.0.1", "host_port": hostPort,
			"guest_addr": "10.0.2.100", "guest_port": guestPort,
		},
	}
	var lastErr error
	for try := 0; try < 20; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		c, err := net.DialTimeout("unix", sock, 2*time.Second)
		if err != nil {
			lastErr = err
			continue
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		json.NewEncoder(c).Encode(req)
		c.(*net.UnixConn).CloseWrite()
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  json.RawMessage `json:"error"`
		}
		err = json.NewDecoder(c).Decode(&resp)
		c.Close()
		if err != nil {
			return err
		}
		if len(resp.Error) > 0 {
			return fmt.Errorf("%s", resp.Error)
		}
		return nil
	}
	return lastErr
}

func nsenterArgs(pid int, cmd ...string) []string {
	return append([]string{"--preserve-credentials", "-U", "-n", "-t", fmt.Sprint(pid)}, cmd...)
}

func defaultGateway(pid int) (string, error) {
	out, err := output(5*time.Second, "nsenter", nsenterArgs(pid, "ip", "-4", "route", "show", "default")...)
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			return f[i+1], nil
		}
	}
	return "", errors.New("no default route in the namespace")
}

// unprivileged runs c as uid/gid 65534 when the benchmark runs as root:
// every tool is measured as the rootless user it is meant for.
func unprivileged(c *exec.Cmd) *exec.Cmd {
	if os.Geteuid() == 0 {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}
	}
	return c
}

// tailBuffer keeps the last bytes a process wrote, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2048 {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-2048:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.buf))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
