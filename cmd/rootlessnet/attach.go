package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/userns"
)

// nsPollInterval is how often the namespace is checked; it bounds the
// exit delay once the namespace is gone.
const nsPollInterval = 200 * time.Millisecond

// slirpDefaultMTU is slirp4netns' default MTU, used in its form.
const slirpDefaultMTU = 1500

// attachOptions are the flags of the attach form and the slirp4netns form.
type attachOptions struct {
	options
	netns, userns, netnsType string
	configure                bool
	readyFD, exitFD          int
	sandbox                  sandboxOptions
	member                   memberOptions
	version                  bool
}

func newAttachFlags(o *attachOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("rootlessnet", pflag.ContinueOnError)
	fs.SortFlags = false
	o.register(fs)
	fs.StringVar(&o.netns, "netns", "", "network namespace to serve, e.g. /proc/PID/ns/net")
	fs.StringVar(&o.userns, "userns", "", "user namespace to join (default: the one that owns the network namespace)")
	fs.StringVar(&o.userns, "userns-path", "", "slirp4netns spelling of --userns")
	fs.BoolVarP(&o.configure, "configure", "c", false, "configure lo, the TAP's address, MTU and default route (default true with --netns, false in the slirp4netns form)")
	fs.StringVar(&o.netnsType, "netns-type", "pid", "slirp4netns form: whether the argument is a PID or a PATH (pid|path)")
	fs.IntVarP(&o.readyFD, "ready-fd", "r", -1, "write \"1\" to this fd and close it once ready")
	fs.IntVarP(&o.exitFD, "exit-fd", "e", -1, "exit when this fd is closed by its other end")
	o.sandbox.register(fs, false)
	o.member.register(fs)
	fs.BoolVarP(&o.version, "version", "v", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage:
  rootlessnet run [flags] -- CMD [ARGS...]
  rootlessnet [flags] --netns PATH
  rootlessnet [flags] PID|PATH [TAPNAME]     (slirp4netns compatible)
  rootlessnet ports --api-socket PATH        (list the published ports)

Flags:
%s`, fs.FlagUsages())
	}
	return fs
}

func attachCommand(args []string) error {
	var o attachOptions
	fs := newAttachFlags(&o)
	if err := parse(fs, args); err != nil {
		return err
	}
	if o.version {
		printVersion()
		return nil
	}
	if err := o.validate(); err != nil {
		return err
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	if o.member.network != "" {
		if o.netns == "" || fs.NArg() > 0 {
			return usageError{fmt.Errorf("--network attaches the namespace given with --netns PATH")}
		}
		if err := o.member.validate(fs, "tap"); err != nil {
			return err
		}
		if !o.queues.auto && o.queues.n > 1 {
			return usageError{fmt.Errorf("--queues is for a TAP of rootlessnet's own: not with --network")}
		}
		return attachMember(&o, log)
	}
	if o.member.name != "" || o.member.ip != "" {
		return usageError{fmt.Errorf("--name and --ip need --network")}
	}
	// The slirp4netns form: PID|PATH [TAPNAME].
	netnsPath, userPath, joinOwner := o.netns, o.userns, true
	configure := o.configure || !fs.Changed("configure")
	switch {
	case o.netns != "" && fs.NArg() > 0:
		return usageError{fmt.Errorf("unexpected argument %q with --netns", fs.Arg(0))}
	case o.netns == "" && fs.NArg() == 0:
		return usageError{fmt.Errorf("no namespace given: use 'rootlessnet run -- CMD', 'rootlessnet --netns PATH' or 'rootlessnet PID [TAPNAME]' (see --help)")}
	case o.netns == "":
		if fs.NArg() > 2 {
			return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(2))}
		}
		configure = o.configure
		if !fs.Changed("mtu") {
			// slirp4netns' own default in its form; clients pass --mtu.
			o.mtu = slirpDefaultMTU
		}
		if fs.NArg() == 2 {
			o.tapName = fs.Arg(1)
			if err := o.validate(); err != nil {
				return err
			}
		}
		switch o.netnsType {
		case "pid":
			pid, err := strconv.Atoi(fs.Arg(0))
			if err != nil || pid <= 0 {
				return usageError{fmt.Errorf("invalid PID %q (use --netns-type=path for a path)", fs.Arg(0))}
			}
			netnsPath = fmt.Sprintf("/proc/%d/ns/net", pid)
			if userPath == "" {
				userPath = fmt.Sprintf("/proc/%d/ns/user", pid)
			}
		case "path":
			netnsPath = fs.Arg(0)
			// As slirp4netns: a path joins no user namespace unless told.
			joinOwner = false
		default:
			return usageError{fmt.Errorf("invalid --netns-type %q: want pid or path", o.netnsType)}
		}
	}
	for _, fd := range []struct {
		name string
		n    int
	}{{"--ready-fd", o.readyFD}, {"--exit-fd", o.exitFD}} {
		if fd.n < 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd.n), unix.F_GETFD, 0); err != nil {
			return usageError{fmt.Errorf("%s %d: %w", fd.name, fd.n, err)}
		}
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var exitFD <-chan struct{}
	if o.exitFD >= 0 {
		exitFD = watchExitFD(o.exitFD)
	}

	taps, dialer, err := inheritedTap(o.portBypass, log)
	var sockDiag *os.File
	if err == nil && taps != nil {
		sockDiag, err = inheritedSockDiag(len(o.autos) > 0)
		if err != nil {
			closeAll(taps)
			if dialer != nil {
				dialer.Close()
			}
		}
	}
	if err == nil && taps == nil {
		taps, dialer, sockDiag, err = attachNamespace(&o, log, netnsPath, userPath, joinOwner, configure)
	}
	if err != nil {
		return err
	}
	n, stop, err := startNetwork(&o.options, log, taps, configure, dialer, sockDiag)
	if err != nil {
		return err
	}
	stop, ns, err := confine(&o.sandbox, &o.options, log, stop, netnsPath)
	if err != nil {
		return err
	}
	defer stop()
	if o.readyFD >= 0 {
		f := os.NewFile(uintptr(o.readyFD), "ready-fd")
		_, err := f.Write([]byte("1"))
		f.Close()
		if err != nil {
			return fmt.Errorf("--ready-fd %d: %w", o.readyFD, err)
		}
	}
	v6 := ""
	if a6 := o.addressing6; a6.Enabled() {
		v6 = fmt.Sprintf("; IPv6 address %s, gateway %s, DNS %s", a6.GuestPrefix(), a6.Gateway, a6.DNS)
	}
	fmt.Printf("rootlessnet: serving %s on %s: address %s, gateway %s, DNS %s, MTU %d%s\n",
		netnsPath, o.tapName, o.addressing.GuestPrefix(), o.addressing.Gateway, o.addressing.DNS, o.mtu, v6)

	tick := time.NewTicker(nsPollInterval)
	defer tick.Stop()
	for {
		select {
		case sig := <-sigs:
			log.Info("exiting", "signal", sig)
			return nil
		case <-exitFD:
			log.Info("exit fd closed; exiting")
			return nil
		case <-n.Done():
			return n.Err()
		case <-tick.C:
			if ns.gone() {
				log.Info("the namespace is gone; exiting", "netns", netnsPath)
				return nil
			}
		}
	}
}

// attachNamespace opens the TAP in the namespace at netnsPath through a
// helper that joins it (its fds, one per queue), and with --port-bypass
// starts the dialer in the same namespaces. With the sandbox it then
// re-executes rootlessnet with the TAP's fds and the dialer (sandbox.go),
// and returns only if that fails.
func attachNamespace(o *attachOptions, log *slog.Logger, netnsPath, userPath string, joinOwner, configure bool) (_ []*os.File, _ *launcher.Dialer, sockDiag *os.File, err error) {
	netns, err := userns.OpenNetNS(netnsPath)
	if err != nil {
		return nil, nil, nil, err
	}
	defer netns.Close()
	user, err := userToJoin(netns, userPath, joinOwner)
	if err != nil {
		return nil, nil, nil, err
	}
	if user != nil {
		defer user.Close()
	}
	req := launcher.SetupRequest{Tap: o.tapName, VnetHdr: o.offload, Configure: configure, MTU: o.mtu, MAC: o.macAddress, SockDiag: len(o.autos) > 0, Queues: o.queues.count(), QueuesOptional: o.queues.auto}
	if configure {
		req.Address = o.addressing.GuestPrefix().String()
		req.Gateway = o.addressing.Gateway.String()
		if o.addressing6.Enabled() {
			req.Address6 = o.addressing6.GuestPrefix().String()
			req.Gateway6 = o.addressing6.Gateway.String()
		}
	}
	taps, sockDiag, warnings, err := launcher.Attach(netns, user, req)
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		if err != nil && sockDiag != nil {
			sockDiag.Close()
		}
	}()
	for _, w := range warnings {
		log.Warn(w)
	}
	var dialer *launcher.Dialer
	if o.portBypass {
		if o.sandbox.sandbox {
			// The dialer gets SIGKILL when the thread that started it
			// ends, and execve ends every thread but its caller: start
			// it from the thread that re-executes.
			runtime.LockOSThread()
		}
		dialer, err = launcher.StartDialer(launcher.DialerOptions{JoinUser: user, JoinNet: netns, LogLevel: o.logLevel, Log: log})
		if err != nil {
			closeAll(taps)
			return nil, nil, nil, fmt.Errorf("--port-bypass: starting the dialer in the container's namespaces: %w", err)
		}
	}
	if o.sandbox.sandbox {
		return nil, nil, nil, reexecWithTap(taps, dialer, sockDiag)
	}
	return taps, dialer, sockDiag, nil
}

// closeAll closes files.
func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// watchExitFD returns a channel closed when the other end of fd closes.
// The goroutine ends then, or with the process.
func watchExitFD(fd int) <-chan struct{} {
	ch := make(chan struct{})
	f := os.NewFile(uintptr(fd), "exit-fd")
	go func() {
		defer close(ch)
		buf := make([]byte, 64)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
		}
	}()
	return ch
}

// userToJoin picks the user namespace for the helper: path when given
// (best effort for a PID's, as slirp4netns), else the netns's owner when
// joinOwner, unless that is ours already.
func userToJoin(netns *os.File, path string, joinOwner bool) (*os.File, error) {
	var u *os.File
	var err error
	switch {
	case path != "":
		u, err = userns.OpenUserNS(path)
	case joinOwner:
		u, err = userns.OwningUserNS(netns)
	default:
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if userns.IsCurrentUserNS(u) {
		u.Close()
		return nil, nil
	}
	return u, nil
}

func printVersion() {
	fmt.Printf("rootlessnet version %s\ncommit: %s\ngvisor: %s\n", version, commit(), gvisorVersion())
}
