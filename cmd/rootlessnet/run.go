package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/rootlessnet/rootlessnet/launcher"
)

func runCommand(args []string) (int, error) {
	var o options
	fs := pflag.NewFlagSet("rootlessnet run", pflag.ContinueOnError)
	fs.SetInterspersed(false)
	o.register(fs)
	var so sandboxOptions
	so.register(fs, runSandboxDefault)
	var mo memberOptions
	mo.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: rootlessnet run [flags] -- CMD [ARGS...]\n\nRuns CMD in new user, network and mount namespaces with connectivity through rootlessnet.\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := parse(fs, args); err != nil {
		return 0, err
	}
	if err := o.validate(); err != nil {
		return 0, err
	}
	if fs.NArg() == 0 {
		return 0, usageError{fmt.Errorf("run: no command given: rootlessnet run [flags] -- CMD [ARGS...]")}
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return 0, err
	}
	if mo.network != "" {
		if err := mo.validate(fs); err != nil {
			return 0, err
		}
		if !o.queues.auto && o.queues.n > 1 {
			return 0, usageError{errors.New("run: --queues is for a TAP of rootlessnet's own: not with --network")}
		}
		return runMember(&o, &mo, fs.Args(), log)
	}
	if mo.name != "" || mo.ip != "" {
		return 0, usageError{errors.New("run: --name and --ip need --network")}
	}
	trace := newStartTrace(log)
	if err := sandboxStart(fs, &so, log); err != nil {
		return 0, err
	}
	trace.forget()
	trace.phase("program") // the runtime's start, the flags, the sandbox's re-execution

	// Signals are caught before the command exists, so none is lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// A stop asked for before the command runs (Ctrl-C at the terminal,
	// or timeout(1) signalling its whole process group, helpers included)
	// ends the start quietly, with the status a shell reports for a
	// command killed by that signal: a setup step the signal broke is not
	// an error to report.
	stopped := stopAsked(sigs)

	req := launcher.SetupRequest{
		Tap:            o.tapName,
		VnetHdr:        o.offload,
		Configure:      true,
		MTU:            o.mtu,
		MAC:            o.macAddress,
		Address:        o.addressing.GuestPrefix().String(),
		Gateway:        o.addressing.Gateway.String(),
		Command:        fs.Args(),
		SockDiag:       len(o.autos) > 0,
		Queues:         o.queues.count(),
		QueuesOptional: o.queues.auto,
	}
	if o.addressing6.Enabled() {
		req.Address6 = o.addressing6.GuestPrefix().String()
		req.Gateway6 = o.addressing6.Gateway.String()
	}
	if !o.disableDNS {
		dir, err := os.MkdirTemp("", "rootlessnet-")
		if err != nil {
			return 0, err
		}
		// The bind mount keeps the file alive; the directory goes now.
		defer os.RemoveAll(dir)
		req.ResolvConf = filepath.Join(dir, "resolv.conf")
		conf := "nameserver " + o.addressing.DNS.String() + "\n"
		if o.addressing6.Enabled() {
			conf += "nameserver " + o.addressing6.DNS.String() + "\n"
		}
		if err := os.WriteFile(req.ResolvConf, []byte(conf), 0o644); err != nil {
			return 0, err
		}
	}
	c, taps, warnings, err := launcher.Launch(req)
	if err != nil {
		return stopped(err)
	}
	trace.phase("namespaces-tap")
	if req.ResolvConf != "" {
		// The child's bind mount holds the file; the sandbox would hide
		// the directory from the deferred removal.
		os.RemoveAll(filepath.Dir(req.ResolvConf))
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	sockDiag := c.TakeSockDiag()
	var dialer *launcher.Dialer
	if o.portBypass {
		// Before confine: the sandbox's empty root has no /proc/self/exe
		// to start it from, and seccomp would refuse the fork.
		if dialer, err = c.StartDialer(o.logLevel, log); err != nil {
			for _, f := range taps {
				f.Close()
			}
			if sockDiag != nil {
				sockDiag.Close()
			}
			c.Signal(syscall.SIGKILL)
			c.Wait()
			return stopped(fmt.Errorf("--port-bypass: starting the dialer in the container's namespaces: %w", err))
		}
	}
	trace.phase("dialer")
	n, stop, err := startNetwork(&o, log, taps, true, dialer, sockDiag)
	if err != nil {
		c.Signal(syscall.SIGKILL)
		c.Wait()
		return stopped(err)
	}
	trace.phase("network")
	if stop, _, err = confine(&so, &o, log, stop, ""); err != nil {
		c.Signal(syscall.SIGKILL)
		c.Wait()
		return stopped(err)
	}
	defer func() {
		// Most of it is the kernel's: closing the TAP's queue waits for
		// an RCU grace period (synchronize_net in tun's detach).
		t := time.Now()
		stop()
		log.Debug("shut down", "took", time.Since(t).Round(10*time.Microsecond))
	}()
	if status, _ := stopped(nil); status != 0 {
		c.Signal(syscall.SIGKILL)
		c.Wait()
		return status, nil
	}
	// From here a signal is passed on to the command: Start returns once
	// it has been executed.
	if err := c.Start(); err != nil {
		c.Wait()
		return 0, err
	}
	trace.phase("confine-exec")
	trace.done()
	log.Debug("command started", "pid", c.Pid(), "address", o.addressing.GuestPrefix(), "gateway", o.addressing.Gateway, "dns", o.addressing.DNS)

	exited := make(chan int, 1)
	go func() { exited <- c.Wait() }()
	for {
		select {
		case sig := <-sigs:
			c.Signal(sig)
		case status := <-exited:
			// The command's sockets live on in the namespace: let
			// what they still send reach the host before the
			// network goes.
			if !n.Fast.DrainTCP(runDrainTimeout) {
				log.Debug("connections still open when the command exited", "waited", runDrainTimeout)
			}
			return status, nil
		case <-n.Done():
			log.Error("the data path stopped", "err", n.Err())
			c.Signal(syscall.SIGKILL)
			return <-exited, nil
		}
	}
}

// stopAsked returns what a start that failed with err, or that is about
// to run the command (err nil), reports: 128+signal, quietly, when a
// signal already asked for a stop, else err.
func stopAsked(sigs <-chan os.Signal) func(err error) (int, error) {
	return func(err error) (int, error) {
		select {
		case sig := <-sigs:
			return 128 + int(sig.(syscall.Signal)), nil
		default:
		}
		// The helper got the group's signal before it could catch it;
		// ours may still be on its way to sigs.
		var se *launcher.StoppedError
		if errors.As(err, &se) {
			return 128 + int(se.Signal), nil
		}
		return 0, err
	}
}

// runDrainTimeout bounds the wait, once the command has exited, for its
// TCP connections to deliver what they still hold.
const runDrainTimeout = time.Second
