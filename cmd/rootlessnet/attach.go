package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/userns"
)

// nsPollInterval is how often attach mode checks that the namespace is
// still there; it bounds the exit delay once it is gone.
const nsPollInterval = 200 * time.Millisecond

func attachCommand(args []string) error {
	var o options
	var netnsPath, usernsPath string
	configure := true
	fs := pflag.NewFlagSet("rootlessnet", pflag.ContinueOnError)
	o.register(fs)
	fs.StringVar(&netnsPath, "netns", "", "network namespace to serve, e.g. /proc/PID/ns/net")
	fs.StringVar(&usernsPath, "userns", "", "user namespace to join (default: the one that owns --netns)")
	fs.BoolVar(&configure, "configure", true, "configure lo, the TAP's address, MTU and default route (false leaves them to the caller)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage:\n  rootlessnet run [flags] -- CMD [ARGS...]\n  rootlessnet [flags] --netns PATH\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	if netnsPath == "" {
		fs.Usage()
		return usageError{fmt.Errorf("no namespace given: use 'rootlessnet run -- CMD' or 'rootlessnet --netns PATH'")}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	netns, err := userns.OpenNetNS(netnsPath)
	if err != nil {
		return err
	}
	nsID, err := userns.StatNS(netnsPath)
	if err != nil {
		netns.Close()
		return err
	}
	user, err := userToJoin(netns, usernsPath)
	if err != nil {
		netns.Close()
		return err
	}
	req := launcher.SetupRequest{Tap: o.tapName, Configure: configure, MTU: o.mtu, MAC: o.macAddress}
	if configure {
		req.Address = o.addressing.GuestPrefix().String()
		req.Gateway = o.addressing.Gateway.String()
	}
	tapFile, warnings, err := launcher.Attach(netns, user, req)
	netns.Close()
	if user != nil {
		user.Close()
	}
	if err != nil {
		return err
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	n, stop, err := startNetwork(&o, log, tapFile)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Printf("rootlessnet: serving %s on %s: address %s, gateway %s, DNS %s, MTU %d\n",
		netnsPath, o.tapName, o.addressing.GuestPrefix(), o.addressing.Gateway, o.addressing.DNS, o.mtu)

	tick := time.NewTicker(nsPollInterval)
	defer tick.Stop()
	for {
		select {
		case sig := <-sigs:
			log.Info("exiting", "signal", sig)
			return nil
		case <-n.Done():
			return n.Err()
		case <-tick.C:
			if id, err := userns.StatNS(netnsPath); err != nil || id != nsID {
				log.Info("the namespace is gone; exiting", "netns", netnsPath)
				return nil
			}
		}
	}
}

// userToJoin picks the user namespace for the helper: --userns, else the
// netns's owner unless that is ours already.
func userToJoin(netns *os.File, path string) (*os.File, error) {
	if path != "" {
		return userns.OpenUserNS(path)
	}
	u, err := userns.OwningUserNS(netns)
	if err != nil {
		return nil, err
	}
	if userns.IsCurrentUserNS(u) {
		u.Close()
		return nil, nil
	}
	return u, nil
}
