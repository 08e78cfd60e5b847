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
		if s.hostPort != 0 {
			if err := waitHostListening(s.hostPort, 5*time.Second); err != nil {
				p.stop(time.Second)
				return nil, err
			}
		}
		return p, nil
	}}
}

// peerTools are the stacks rootlessnet is compared with.
func peerTools() []*tool {
	return []*tool{
		{name: "slirp4netns", bin: "slirp4netns", gateway: "10.0.2.2", start: func(s *session) (*proc, error) {
			api := filepath.Join(s.dir, "api.sock")
			c := unprivileged(exec.Command("slirp4netns", "--configure", fmt.Sprintf("--mtu=%d", s.mtu), "--ready-fd=3", "--api-socket", api, fmt.Sprint(s.pid), "tap0"))
			c.Stdout, c.Stderr = s.stderr, s.stderr
			p, err := startReadyFD(c, 15*time.Second)
			if err != nil {
				return nil, fmt.Errorf("%v: %s", err, s.stderr.tail())
			}
			if s.hostPort != 0 {
				if err := slirpAddHostfwd(api, s.hostPort); err != nil {
					p.stop(time.Second)
					return nil, fmt.Errorf("add_hostfwd: %w", err)
				}
				if err := waitHostListening(s.hostPort, 5*time.Second); err != nil {
					p.stop(time.Second)
					return nil, err
				}
			}
			return p, nil
		}},
		{name: "pasta", bin: "pasta", start: func(s *session) (*proc, error) {
			fwd := "none"
			if s.hostPort != 0 {
				fwd = fmt.Sprintf("127.0.0.1/%d:%d", s.hostPort, guestPort)
			}
			c := unprivileged(exec.Command("pasta", "--config-net", "--mtu", fmt.Sprint(s.mtu), "-f", "-q", "-t", fwd, "-u", "none", "-T", "none", "-U", "none", fmt.Sprint(s.pid)))
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
				if _, err := defaultGateway(s.pid); err == nil && (s.hostPort == 0 || hostListening(s.hostPort)) {
					return p, nil
				}
				if time.Now().After(deadline) {
					p.stop(time.Second)
					return nil, fmt.Errorf("pasta not ready after 10s: %s", s.stderr.tail())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}},
	}
}

// slirpAddHostfwd publishes 127.0.0.1:hostPort to the guest's port 5201
// through slirp4netns' JSON API (one request per connection).
func slirpAddHostfwd(sock string, hostPort int) error {
	req := map[string]any{
		"execute": "add_hostfwd",
		"arguments": map[string]any{
			"proto": "tcp", "host_addr": "127.0.0.1", "host_port": hostPort,
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
