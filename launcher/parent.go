package launcher

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/rootlessnet/rootlessnet/userns"
)

// Container is a run-mode child: new namespaces, and the command once
// started.
type Container struct {
	child    *userns.Child
	sockDiag *os.File
}

// Launch creates new user, network and mount namespaces with a child in
// them, has it open and configure the TAP, and returns the TAP's fds, one
// per queue (see SetupRequest.Queues). The command does not run until
// Start.
func Launch(req SetupRequest) (*Container, []*os.File, []string, error) {
	child, err := userns.Spawn(userns.SpawnOptions{
		Role:          RoleRun,
		NewNamespaces: true,
		Stdin:         os.Stdin,
		Stdout:        os.Stdout,
		Stderr:        os.Stderr,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	c := &Container{child: child}
	taps, diag, warnings, err := requestTap(child, req)
	if err != nil {
		c.kill()
		return nil, nil, nil, c.stoppedOr(err)
	}
	c.sockDiag = diag
	return c, taps, warnings, nil
}

// LaunchMember starts a member of a rootless network: a child that joins
// the network's user namespace (userNS) and makes network, mount and UTS
// namespaces of its own there. plug connects the child's network
// namespace to the network (the network's process has its hub create the
// veth pair); the child then configures the link req.Tap names. The
// command does not run until Start.
func LaunchMember(userNS *os.File, plug func(netns *os.File) error, req SetupRequest) (*Container, []string, error) {
	req.Member = true
	child, err := userns.Spawn(userns.SpawnOptions{
		Role:     RoleRun,
		JoinUser: userNS,
		Member:   true,
		Stdin:    os.Stdin,
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
	})
	if err != nil {
		return nil, nil, err
	}
	c := &Container{child: child}
	fail := func(err error) (*Container, []string, error) {
		c.kill()
		return nil, nil, c.stoppedOr(err)
	}
	if err := child.Conn.Send(req); err != nil {
		return fail(fmt.Errorf("talking to the namespace helper: %w", err))
	}
	var hello MemberNetNS
	files, err := child.Conn.Recv(&hello)
	if err == nil && len(files) != 1 {
		err = errors.New("the member sent no network namespace")
	}
	if err != nil {
		closeFiles(files)
		return fail(err)
	}
	perr := plug(files[0])
	files[0].Close()
	if err := child.Conn.Send(MemberAttached{Error: errString(perr)}); err != nil {
		return fail(err)
	}
	if perr != nil {
		return fail(perr)
	}
	var reply SetupReply
	files, err = child.Conn.Recv(&reply)
	if err != nil {
		return fail(err)
	}
	if reply.Error != "" || len(files) != btoi(req.SockDiag) {
		closeFiles(files)
		if reply.Error == "" {
			reply.Error = fmt.Sprintf("the member sent %d descriptors, want %d", len(files), btoi(req.SockDiag))
		}
		return fail(errors.New(reply.Error))
	}
	if req.SockDiag {
		c.sockDiag = files[0]
	}
	return c, reply.Warnings, nil
}

// TakeSockDiag returns the sock_diag socket that SetupRequest.SockDiag
// asked for (nil when not asked), once; the caller closes it.
func (c *Container) TakeSockDiag() *os.File {
	f := c.sockDiag
	c.sockDiag = nil
	return f
}

// Start runs the command; an error means it could not be executed, and
// carries the exit status to use.
func (c *Container) Start() error {
	if err := c.child.Conn.Send(StartRequest{}); err != nil {
		return fmt.Errorf("starting the command: %w", err)
	}
	var reply ExecReply
	_, err := c.child.Conn.Recv(&reply)
	c.child.Conn.Close()
	if userns.IsClosed(err) {
		return nil // exec succeeded, or the child died: Wait tells
	}
	if err != nil {
		return fmt.Errorf("starting the command: %w", err)
	}
	return &ExecError{Msg: reply.Error, Status: reply.Status}
}

// ExecError is a command that could not be executed.
type ExecError struct {
	Msg    string
	Status int
}

func (e *ExecError) Error() string { return e.Msg }

// Signal sends sig to the command.
func (c *Container) Signal(sig os.Signal) error { return c.child.Cmd.Process.Signal(sig) }

// Pid is the command's process id.
func (c *Container) Pid() int { return c.child.Cmd.Process.Pid }

// Wait waits for the command and returns its exit status, 128+signal when
// a signal killed it, as shells report.
func (c *Container) Wait() int {
	err := c.child.Cmd.Wait()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

func (c *Container) kill() {
	c.child.Conn.Close()
	c.child.Cmd.Process.Kill()
	c.child.Cmd.Wait()
}

// StoppedError is a start that failed because a stop signal (SIGINT,
// SIGTERM, SIGHUP) killed the namespace helper before it could catch
// signals: a terminal's Ctrl-C or timeout(1) signalling the process
// group, which the caller reports as the stop it is, not as a failure.
type StoppedError struct {
	Signal syscall.Signal
	Err    error
}

func (e *StoppedError) Error() string { return e.Err.Error() }

// stoppedOr returns err as a StoppedError when the helper, now reaped,
// died of a stop signal.
func (c *Container) stoppedOr(err error) error {
	ps := c.child.Cmd.ProcessState
	if ps == nil {
		return err
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		switch sig := ws.Signal(); sig {
		case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP:
			return &StoppedError{Signal: sig, Err: err}
		}
	}
	return err
}

// Attach has a child join netns (and userns, when not nil) and open the
// TAP there; it returns the TAP's fds, one per queue (see
// SetupRequest.Queues), and the sock_diag socket when req.SockDiag asked
// for it, once the child is done.
func Attach(netns, user *os.File, req SetupRequest) (taps []*os.File, sockDiag *os.File, warnings []string, err error) {
	child, err := userns.Spawn(userns.SpawnOptions{Role: RoleAttach, JoinUser: user, JoinNet: netns})
	if err != nil {
		return nil, nil, nil, err
	}
	taps, diag, warnings, err := requestTap(child, req)
	child.Conn.Close()
	werr := child.Wait()
	if err != nil {
		if userns.IsClosed(err) && werr != nil {
			return nil, nil, nil, werr
		}
		return nil, nil, nil, err
	}
	return taps, diag, warnings, nil
}

func requestTap(child *userns.Child, req SetupRequest) (_ []*os.File, _ *os.File, _ []string, err error) {
	if err := child.Conn.Send(req); err != nil {
		return nil, nil, nil, fmt.Errorf("talking to the namespace helper: %w", err)
	}
	var reply SetupReply
	files, err := child.Conn.Recv(&reply)
	if err != nil {
		if s := child.Stderr(); s != "" && userns.IsClosed(err) {
			return nil, nil, nil, errors.New(s)
		}
		return nil, nil, nil, fmt.Errorf("talking to the namespace helper: %w", err)
	}
	queues := max(reply.Queues, 1)
	want := queues + btoi(req.SockDiag)
	if reply.Error != "" || len(files) != want || queues > max(req.Queues, 1) {
		closeFiles(files)
		if reply.Error != "" {
			return nil, nil, nil, errors.New(reply.Error)
		}
		return nil, nil, nil, fmt.Errorf("the namespace helper sent %d descriptors for %d TAP queues, want %d for at most %d", len(files), queues, want, max(req.Queues, 1))
	}
	var diag *os.File
	if req.SockDiag {
		diag = files[queues]
	}
	taps := make([]*os.File, 0, queues)
	for i, f := range files[:queues] {
		t, err := nonBlocking(f)
		if err != nil {
			closeFiles(taps)
			closeFiles(files[i+1 : queues])
			if diag != nil {
				diag.Close()
			}
			return nil, nil, nil, err
		}
		taps = append(taps, t)
	}
	return taps, diag, reply.Warnings, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nonBlocking makes a received TAP fd non-blocking and re-wraps it so that
// os.File registers it with the poller; it takes f over.
func nonBlocking(f *os.File) (*os.File, error) {
	defer f.Close()
	if err := syscall.SetNonblock(int(f.Fd()), true); err != nil {
		return nil, err
	}
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "tap"), nil
}
