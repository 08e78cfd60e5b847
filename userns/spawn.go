package userns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/rootlessnet/rootlessnet/userns/nsenter"
)

// RoleEnv names the role a re-executed rootlessnet plays; the child's main
// checks it before anything else.
const RoleEnv = "_ROOTLESSNET_CHILD"

// controlFD is where the child finds its end of the control channel.
const controlFD = 3

// Child is a re-executed rootlessnet running inside the container's
// namespaces.
type Child struct {
	Cmd  *exec.Cmd
	Conn *Conn
	// stderr holds what a child that joins namespaces printed, to explain
	// a failure to join.
	stderr *lockedBuffer
}

// SpawnOptions says where the child runs.
type SpawnOptions struct {
	// Role is the child's role (RoleEnv's value).
	Role string
	// NewNamespaces creates new user, network and mount namespaces, with
	// the caller's uid and gid mapped to 0.
	NewNamespaces bool
	// JoinUser and JoinNet are namespaces to join (either may be nil).
	JoinUser, JoinNet *os.File
	// Member, with JoinUser, makes new network, mount and UTS namespaces
	// in the joined user namespace (a member of a rootless network).
	Member bool
	// NonDumpable makes a joining child non-dumpable before it joins: a
	// long-lived child that the container's root must not ptrace.
	NonDumpable bool
	// Stdio for the child; nil means /dev/null, except Stderr which is
	// captured when joining.
	Stdin, Stdout, Stderr *os.File
}

// Spawn starts /proc/self/exe in the requested namespaces.
func Spawn(opts SpawnOptions) (*Child, error) {
	conn, childEnd, err := SocketPair()
	if err != nil {
		return nil, err
	}
	defer childEnd.Close()

	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"rootlessnet-" + opts.Role}
	cmd.ExtraFiles = []*os.File{childEnd} // fd 3
	cmd.Env = append(filteredEnv(), RoleEnv+"="+opts.Role)
	cmd.Stdin, cmd.Stdout = opts.Stdin, opts.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	c := &Child{Cmd: cmd, Conn: conn}
	if opts.Stderr != nil {
		cmd.Stderr = opts.Stderr
	} else {
		c.stderr = &lockedBuffer{}
		cmd.Stderr = c.stderr
	}

	if opts.NewNamespaces {
		uid, gid := os.Getuid(), os.Getgid()
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		// An unprivileged writer of gid_map must deny setgroups first, and
		// a namespace nested in one that denies it (unshare -r, bwrap,
		// flatpak) cannot allow it again: the kernel refuses the write.
		cmd.SysProcAttr.GidMappingsEnableSetgroups = MayAllowSetgroups()
	}
	if opts.JoinUser != nil || opts.JoinNet != nil {
		userFD, netFD := -1, -1
		if opts.JoinUser != nil {
			cmd.ExtraFiles = append(cmd.ExtraFiles, opts.JoinUser)
			userFD = controlFD + len(cmd.ExtraFiles) - 1
		}
		if opts.JoinNet != nil {
			cmd.ExtraFiles = append(cmd.ExtraFiles, opts.JoinNet)
			netFD = controlFD + len(cmd.ExtraFiles) - 1
		}
		spec := strconv.Itoa(userFD) + "," + strconv.Itoa(netFD)
		if opts.NonDumpable {
			spec += nsenter.NoDump
		}
		if opts.Member {
			spec += nsenter.Member
		}
		cmd.Env = append(cmd.Env, nsenter.Env+"="+spec)
	}

	if err := cmd.Start(); err != nil {
		conn.Close()
		if opts.NewNamespaces {
			return nil, Diagnose(err)
		}
		return nil, fmt.Errorf("starting the namespace helper: %w", err)
	}
	return c, nil
}

// Wait waits for the child and, when it failed to join its namespaces,
// returns the reason it printed.
func (c *Child) Wait() error {
	err := c.Cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == nsenter.FailedStatus && c.stderr != nil {
		return errors.New(strings.TrimSpace(c.stderr.String()))
	}
	return err
}

// Stderr returns what the child printed, when it was captured.
func (c *Child) Stderr() string {
	if c.stderr == nil {
		return ""
	}
	return strings.TrimSpace(c.stderr.String())
}

// ChildConn returns the control channel of a child started by Spawn, and
// false when this process is not such a child.
func ChildConn() (*Conn, string, bool) {
	role := os.Getenv(RoleEnv)
	if role == "" {
		return nil, "", false
	}
	os.Unsetenv(RoleEnv)
	f := os.NewFile(controlFD, "control")
	conn, err := FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rootlessnet:", err)
		os.Exit(1)
	}
	return conn, role, true
}

// filteredEnv is the environment without rootlessnet's internal variables.
func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, RoleEnv+"=") || strings.HasPrefix(kv, nsenter.Env+"=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
