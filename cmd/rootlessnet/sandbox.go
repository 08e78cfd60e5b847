package main

// Wiring of --enable-sandbox and --enable-seccomp (package sandbox).
//
// The sandbox's namespaces must exist before the Go runtime starts
// threads, so rootlessnet re-executes itself in place (same pid) with the
// sandbox package's constructor making them:
//   - attach and slirp4netns forms: once the TAP fd is in hand, which it
//     passes on. Opening the TAP needs a helper that joins the container's
//     user namespace, which a process already in the sandbox's own user
//     namespace may not do.
//   - run: first thing, since the command's process is a child that would
//     not survive the exec; it is then made from inside the sandbox's
//     namespaces (its user namespace nested in ours).
//
// After that, everything is set up as without the sandbox (API socket,
// published ports, resolv.conf), then confine enters the empty root and
// loads the seccomp filter, before ready-fd is written or the command runs.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/sandbox"
	"github.com/rootlessnet/rootlessnet/tap"
	"github.com/rootlessnet/rootlessnet/userns"
)

// tapFDEnv passes the TAP's fd numbers to the re-executed process (one
// per queue, comma-separated), and sockDiagFDEnv the sock_diag socket's
// (-p auto).
const (
	tapFDEnv      = "_ROOTLESSNET_SANDBOX_TAP"
	sockDiagFDEnv = "_ROOTLESSNET_SANDBOX_SOCKDIAG"
)

// sandboxOptions are --enable-sandbox and --enable-seccomp.
type sandboxOptions struct {
	sandbox, seccomp bool
	// explicit: --enable-sandbox was given, so failing to create the
	// sandbox is an error rather than a warning.
	explicit bool
}

func (s *sandboxOptions) register(fs *pflag.FlagSet, def bool) {
	fs.BoolVar(&s.sandbox, "enable-sandbox", def, "confine the running stack: an empty read-only root in its own mount namespace, every capability dropped but CAP_NET_BIND_SERVICE")
	fs.BoolVar(&s.seccomp, "enable-seccomp", def, "restrict the running stack's system calls to an allow-list (seccomp)")
}

// sandboxStart runs first in `run`: it re-executes rootlessnet into the
// sandbox's namespaces (returning only on error), or, in the re-executed
// copy, checks that they were made.
func sandboxStart(fs *pflag.FlagSet, so *sandboxOptions, log *slog.Logger) error {
	so.explicit = fs.Changed("enable-sandbox")
	started, err := sandbox.Started()
	if !started {
		if so.sandbox {
			return sandbox.Reexec()
		}
		return nil
	}
	if err != nil {
		if so.explicit || !sandbox.Refused(err) {
			return err
		}
		log.Warn("running without the sandbox", "err", err)
		so.sandbox = false
	}
	return nil
}

// inheritedTap returns the TAP's fds (one per queue), and the dialer when
// bypass is on, that attachNamespace passed to the re-executed
// rootlessnet, or nils in any other process.
func inheritedTap(bypass bool, log *slog.Logger) (_ []*os.File, _ *launcher.Dialer, err error) {
	// Adopted first, whatever happens next, so that it is reaped.
	dialer, derr := launcher.AdoptDialer(log)
	defer func() {
		if dialer != nil && (err != nil || !bypass) {
			dialer.Close()
		}
	}()
	v, ok := os.LookupEnv(tapFDEnv)
	if !ok {
		if dialer != nil { // a dialer without a TAP: not ours to use
			dialer.Close()
			dialer = nil
		}
		_, err := sandbox.Started() // nothing to check; clears a stray request
		return nil, nil, errors.Join(err, derr)
	}
	os.Unsetenv(tapFDEnv)
	fds, err := parseFDList(v)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: bad %s=%q", tapFDEnv, v)
	}
	taps := make([]*os.File, len(fds))
	for i, fd := range fds {
		unix.CloseOnExec(fd)
		taps[i] = os.NewFile(uintptr(fd), "tap")
	}
	if _, err := sandbox.Started(); err != nil {
		closeAll(taps)
		return nil, nil, err
	}
	if derr == nil && bypass && dialer == nil {
		derr = errors.New("--port-bypass: the dialer was not passed on to the sandboxed process")
	}
	if derr != nil {
		closeAll(taps)
		return nil, nil, derr
	}
	if !bypass {
		return taps, nil, nil
	}
	return taps, dialer, nil
}

// parseFDList parses tapFDEnv's value: fd numbers above 2, comma-separated,
// at most tap.MaxQueues, none twice.
func parseFDList(v string) ([]int, error) {
	parts := strings.Split(v, ",")
	if len(parts) > tap.MaxQueues {
		return nil, fmt.Errorf("%d fds, at most %d", len(parts), tap.MaxQueues)
	}
	fds := make([]int, 0, len(parts))
	for _, p := range parts {
		fd, err := strconv.Atoi(p)
		if err != nil || fd < 3 || slices.Contains(fds, fd) {
			return nil, fmt.Errorf("bad fd %q", p)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// formatFDList is parseFDList's inverse.
func formatFDList(fds []int) string {
	s := make([]string, len(fds))
	for i, fd := range fds {
		s[i] = strconv.Itoa(fd)
	}
	return strings.Join(s, ",")
}

// inheritedSockDiag returns the sock_diag socket that attachNamespace
// passed to the re-executed rootlessnet, nil when there is none; want
// says whether -p auto needs it (an unwanted one is closed).
func inheritedSockDiag(want bool) (*os.File, error) {
	v, ok := os.LookupEnv(sockDiagFDEnv)
	if !ok {
		if want {
			return nil, errors.New("-p auto: the sock_diag socket was not passed on to the sandboxed process")
		}
		return nil, nil
	}
	os.Unsetenv(sockDiagFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("sandbox: bad %s=%q", sockDiagFDEnv, v)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "sock_diag")
	if !want {
		f.Close()
		return nil, nil
	}
	return f, nil
}

// reexecWithTap re-executes rootlessnet into the sandbox's namespaces with
// the TAP's fds (one per queue), the dialer and the sock_diag socket, if
// any; it returns only on error, having closed them.
func reexecWithTap(taps []*os.File, dialer *launcher.Dialer, sockDiag *os.File) error {
	defer closeAll(taps)
	var env []string
	if sockDiag != nil {
		defer sockDiag.Close()
		// Fd makes it blocking, as SockDiag wants it anyway.
		fd := sockDiag.Fd()
		if _, err := unix.FcntlInt(fd, unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("sandbox: passing the sock_diag socket: %w", err)
		}
		env = append(env, sockDiagFDEnv+"="+strconv.Itoa(int(fd)))
	}
	if dialer != nil {
		defer dialer.Close()
		e, err := dialer.ExecEnv()
		if err != nil {
			return err
		}
		env = append(env, e)
	}
	fds := make([]int, len(taps))
	for i, tap := range taps {
		// Through RawConn: File.Fd would make the fd blocking.
		rc, err := tap.SyscallConn()
		if err != nil {
			return err
		}
		var cerr error
		if err := rc.Control(func(f uintptr) {
			fds[i] = int(f)
			_, cerr = unix.FcntlInt(f, unix.F_SETFD, 0) // survive the exec
		}); err != nil {
			return err
		}
		if cerr != nil {
			return fmt.Errorf("sandbox: passing the TAP fd: %w", cerr)
		}
	}
	return sandbox.Reexec(append(env, tapFDEnv+"="+formatFDList(fds))...)
}

// nsWatch tells when the served namespace's path stops naming it.
type nsWatch struct {
	path string
	id   userns.NSID
	// Inside the sandbox: the path's directory, opened before the root
	// was emptied, and the entry's identity in it.
	dir  *sandbox.Dir
	did  sandbox.FileID
	link bool
}

// gone reports whether the namespace is gone. Inside the sandbox only the
// entry's presence counts for a /proc/PID/ns/net symlink (it vanishes with
// the process; the kept directory never names a later process of the same
// PID), and its identity too for any other file (a bind-mounted namespace).
func (w *nsWatch) gone() bool {
	if w.dir != nil {
		id, _, err := w.dir.Lstat()
		return err != nil || (!w.link && id != w.did)
	}
	id, err := userns.StatNS(w.path)
	return err != nil || id != w.id
}

func (w *nsWatch) close() {
	if w != nil && w.dir != nil {
		w.dir.Close()
	}
}

// confine applies the sandbox and seccomp to the process once the network
// runs, and returns stop extended with what the sandbox needs at exit
// (removing the API socket through a kept descriptor) and, given the
// served namespace's path, a watch on it. On error it has called stop.
func confine(so *sandboxOptions, o *options, log *slog.Logger, stop func(), nsPath string) (func(), *nsWatch, error) {
	var ns *nsWatch
	var api *sandbox.Dir
	var apiID sandbox.FileID
	fail := func(err error) (func(), *nsWatch, error) {
		if api != nil {
			api.Close()
		}
		ns.close()
		stop()
		return nil, nil, err
	}
	if nsPath != "" {
		ns = &nsWatch{path: nsPath}
		if so.sandbox {
			d, err := sandbox.OpenDir(nsPath)
			if err != nil {
				return fail(err)
			}
			ns.dir = d
		} else {
			id, err := userns.StatNS(nsPath)
			if err != nil {
				return fail(err)
			}
			ns.id = id
		}
	}
	if so.sandbox {
		if o.apiSocket != "" {
			d, err := sandbox.OpenDir(o.apiSocket)
			if err != nil {
				return fail(err)
			}
			api = d
			if apiID, _, err = d.Lstat(); err != nil {
				return fail(fmt.Errorf("sandbox: API socket: %w", err))
			}
		}
		if err := sandbox.Enter(); err != nil {
			return fail(err)
		}
		if ns != nil {
			// From the detached old tree a bind-mounted namespace file
			// may show the file under the mount: the reference is what
			// the descriptor sees now.
			id, link, err := ns.dir.Lstat()
			if err != nil {
				return fail(fmt.Errorf("sandbox: %s: %w", nsPath, err))
			}
			ns.did, ns.link = id, link
		}
		log.Debug("sandbox entered: empty root, capabilities dropped but CAP_NET_BIND_SERVICE")
	}
	if so.seccomp {
		if err := sandbox.ApplySeccomp(); err != nil {
			return fail(err)
		}
		log.Debug("seccomp filter loaded", "allowed_syscalls", sandbox.AllowedCount())
	}
	return func() {
		stop()
		if api != nil {
			if err := api.RemoveIf(apiID); err != nil && !errors.Is(err, syscall.ENOENT) {
				log.Warn("API socket not removed", "path", o.apiSocket, "err", err)
			}
			api.Close()
		}
		ns.close()
	}, ns, nil
}

// runSandboxDefault: `run` confines its stack unless told not to. Neither
// costs measurable speed: test/bench A/B (rootlessnet --netns with and
// without both flags, interleaved, 7 runs, 2 shared cores, 2026-11-23) gave
// TCP at MTU 65520 0.94x/1.10x (out/in), 0.89x at MTU 1500, published port
// 1.32x, CPU per GB 1.03x/0.96x, all within the run-to-run noise. The
// kernel caches seccomp's verdict for calls whose answer does not depend
// on arguments, so allowed calls skip the filter.
const runSandboxDefault = true
