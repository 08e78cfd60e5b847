package main

// `rootlessnet run --network NAME`: CMD as a member of a rootless network.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/netd"
	"github.com/rootlessnet/rootlessnet/userns"
)

// memberOptions are run's flags for a network's member.
type memberOptions struct {
	network, name, ip string
}

func (m *memberOptions) register(fs *pflag.FlagSet) {
	fs.StringVar(&m.network, "network", "", "run CMD as a member of this rootless network (rootlessnet network create): its own namespaces, an address on the network, other members by name")
	fs.StringVar(&m.name, "name", "", "with --network: the member's host name, by which the other members reach it (NAME and NAME.NETWORK); default member-N")
	fs.StringVar(&m.ip, "ip", "", "with --network: the member's IPv4 address (default: the first free one)")
}

// memberFlags are run's flags that serve one namespace of its own, and
// make no sense for a member, whose network is the network's.
var memberFlags = []string{"cidr", "cidr6", "enable-ipv6", "mtu", "tap", "macaddress", "disable-host-loopback", "disable-dns", "resolv-conf", "pcap", "api-socket", "outbound-addr", "outbound-addr6", "port-bypass", "tcp-fastpath", "busy-poll", "offload", "max-flows", "enable-sandbox", "enable-seccomp"}

func (m *memberOptions) validate(fs *pflag.FlagSet, allowed ...string) error {
	for _, f := range memberFlags {
		if fs.Changed(f) && !slices.Contains(allowed, f) {
			return usageError{fmt.Errorf("run --network: --%s is the network's to set (rootlessnet network create)", f)}
		}
	}
	if err := netd.ValidName("network", m.network); err != nil {
		return usageError{err}
	}
	if m.name != "" {
		if err := netd.ValidName("member", m.name); err != nil {
			return usageError{err}
		}
	}
	return nil
}

func runMember(o *options, mo *memberOptions, command []string, log *slog.Logger) (int, error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	stopped := stopAsked(sigs)

	state, cfg, err := findNetwork(mo.network)
	if err != nil {
		return 0, err
	}
	conn, err := netd.Dial(netd.PathsOf(state, cfg.Name))
	if err != nil {
		return 0, fmt.Errorf("network %s: %w: remove it with 'rootlessnet network rm %s' and create it again", cfg.Name, err, cfg.Name)
	}
	defer conn.Close()
	reply, files, err := netd.Call(conn, netd.Request{Op: "join", Name: mo.name, IP: mo.ip, Pid: os.Getpid()})
	if err != nil {
		return stopped(fmt.Errorf("joining network %s: %w", cfg.Name, err))
	}
	if len(files) != 1 || reply.Member == nil || reply.Network == nil {
		for _, f := range files {
			f.Close()
		}
		return 0, fmt.Errorf("joining network %s: the network sent no user namespace", cfg.Name)
	}
	userNS := files[0]
	defer userNS.Close()
	net, me := reply.Network, reply.Member

	req := launcher.SetupRequest{
		Tap:       "eth0",
		Configure: true,
		MTU:       net.MTU,
		Address:   fmt.Sprintf("%s/%d", me.Address, net.Subnet.Bits()),
		Gateway:   net.Gateway.String(),
		Hostname:  me.Name,
		Command:   command,
		SockDiag:  len(o.autos) > 0,
	}
	conf := fmt.Sprintf("search %s\nnameserver %s\n", net.Name, net.DNS)
	if me.Address6.IsValid() {
		req.Address6 = fmt.Sprintf("%s/%d", me.Address6, net.Subnet6.Bits())
		req.Gateway6 = net.Gateway6.String()
		conf += fmt.Sprintf("nameserver %s\n", net.DNS6)
	}
	dir, err := os.MkdirTemp("", "rootlessnet-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	req.ResolvConf = filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(req.ResolvConf, []byte(conf), 0o644); err != nil {
		return 0, err
	}
	plug := func(ns *os.File) error {
		_, _, err := netd.Call(conn, netd.Request{Op: "plug"}, ns)
		return err
	}
	c, warnings, err := launcher.LaunchMember(userNS, plug, req)
	if err != nil {
		return stopped(err)
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	if len(o.ports) > 0 {
		if _, _, err := netd.Call(conn, netd.Request{Op: "publish", Ports: o.ports}); err != nil {
			c.Signal(syscall.SIGKILL)
			c.Wait()
			return stopped(err)
		}
	}
	if sd := c.TakeSockDiag(); sd != nil {
		_, _, err := netd.Call(conn, netd.Request{Op: "auto", Autos: o.autos}, sd)
		sd.Close()
		if err != nil {
			c.Signal(syscall.SIGKILL)
			c.Wait()
			return stopped(err)
		}
	}
	if status, _ := stopped(nil); status != 0 {
		c.Signal(syscall.SIGKILL)
		c.Wait()
		return status, nil
	}
	if err := c.Start(); err != nil {
		c.Wait()
		return 0, err
	}
	log.Debug("member started", "network", net.Name, "name", me.Name, "address", me.Address, "pid", c.Pid())

	// The connection is the membership: the network asks a member to
	// stop on it (network rm -f), and its end means the network's
	// process is gone.
	netMsgs, leave := watchMembership(conn)
	defer leave()
	exited := make(chan int, 1)
	go func() { exited <- c.Wait() }()
	for {
		select {
		case sig := <-sigs:
			c.Signal(sig)
		case r, ok := <-netMsgs:
			if !ok {
				log.Warn("the network's process is gone: this member has lost the network", "network", net.Name)
				netMsgs = nil
				continue
			}
			if r.Stop {
				log.Info("the network is being removed: stopping the member", "network", net.Name)
				c.Signal(syscall.SIGTERM)
			}
		case status := <-exited:
			return status, nil
		}
	}
}

// attachMember makes an existing network namespace (--netns PATH, made by
// another launcher, in a user namespace that is not the network's) a
// member: a TAP there, configured with the member's address, whose frames
// the network's process relays to a port of the bridge. Names and routes
// work as for any member; traffic to the other members crosses that relay
// instead of staying in the kernel. It serves until the namespace is gone
// or a signal.
func attachMember(o *attachOptions, log *slog.Logger) error {
	mo := &o.member
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	state, cfg, err := findNetwork(mo.network)
	if err != nil {
		return err
	}
	netns, err := userns.OpenNetNS(o.netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	user, err := userToJoin(netns, o.userns, true)
	if err != nil {
		return err
	}
	if user != nil {
		defer user.Close()
	}
	conn, err := netd.Dial(netd.PathsOf(state, cfg.Name))
	if err != nil {
		return fmt.Errorf("network %s: %w: remove it with 'rootlessnet network rm %s' and create it again", cfg.Name, err, cfg.Name)
	}
	defer conn.Close()
	reply, files, err := netd.Call(conn, netd.Request{Op: "join", Name: mo.name, IP: mo.ip, Pid: os.Getpid()})
	for _, f := range files {
		f.Close() // the network's user namespace: not joined here
	}
	if err != nil {
		return fmt.Errorf("joining network %s: %w", cfg.Name, err)
	}
	if reply.Member == nil || reply.Network == nil {
		return fmt.Errorf("joining network %s: no member in the reply", cfg.Name)
	}
	net, me := reply.Network, reply.Member
	req := launcher.SetupRequest{
		Tap:       o.tapName,
		Configure: true,
		MTU:       net.MTU,
		MAC:       o.macAddress,
		Address:   fmt.Sprintf("%s/%d", me.Address, net.Subnet.Bits()),
		Gateway:   net.Gateway.String(),
	}
	if me.Address6.IsValid() {
		req.Address6 = fmt.Sprintf("%s/%d", me.Address6, net.Subnet6.Bits())
		req.Gateway6 = net.Gateway6.String()
	}
	taps, _, warnings, err := launcher.Attach(netns, user, req)
	if err != nil {
		return err
	}
	tapFile := taps[0] // one queue: req asks for no more
	for _, w := range warnings {
		log.Warn(w)
	}
	_, _, err = netd.Call(conn, netd.Request{Op: "plugtap"}, tapFile)
	tapFile.Close()
	if err != nil {
		return fmt.Errorf("plugging %s into network %s: %w", o.netns, net.Name, err)
	}
	if len(o.ports) > 0 {
		if _, _, err := netd.Call(conn, netd.Request{Op: "publish", Ports: o.ports}); err != nil {
			return err
		}
	}
	nsID, err := userns.StatNS(o.netns)
	if err != nil {
		return err
	}
	fmt.Printf("rootlessnet: %s is member %s of network %s: address %s/%d, gateway %s, DNS %s (search %s), MTU %d\n",
		o.netns, me.Name, net.Name, me.Address, net.Subnet.Bits(), net.Gateway, net.DNS, net.Name, net.MTU)

	netMsgs, leave := watchMembership(conn)
	defer leave()
	tick := time.NewTicker(nsPollInterval)
	defer tick.Stop()
	for {
		select {
		case sig := <-sigs:
			log.Info("exiting", "signal", sig)
			return nil
		case r, ok := <-netMsgs:
			if !ok {
				return fmt.Errorf("network %s: the network's process is gone", net.Name)
			}
			if r.Stop {
				log.Info("the network is being removed: leaving it", "network", net.Name)
				return nil
			}
		case <-tick.C:
			if id, err := userns.StatNS(o.netns); err != nil || id != nsID {
				log.Info("the namespace is gone; leaving the network", "netns", o.netns)
				return nil
			}
		}
	}
}

// watchMembership reads what the network sends a member (a stop, from
// rm -f) until the connection ends, which closes the channel: the
// network's process is gone. leave ends the membership, waiting (bounded)
// until the network has released the member's name, address and ports,
// so that a run right after this one may take them again; then it ends
// the watch.
func watchMembership(conn *userns.Conn) (msgs <-chan netd.Reply, leave func()) {
	ch := make(chan netd.Reply, 1)
	left, gone := make(chan struct{}), make(chan struct{})
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		defer close(gone)
		defer close(ch)
		for {
			var r netd.Reply
			if _, err := conn.Recv(&r); err != nil {
				if !errors.Is(err, userns.ErrMessage) {
					return
				}
				continue
			}
			if r.Left {
				close(left)
				continue
			}
			select {
			case ch <- r:
			default: // a stop already waits: one is enough
			}
		}
	}()
	return ch, func() {
		if conn.Send(netd.Request{Op: "leave"}) == nil {
			select {
			case <-left:
			case <-gone: // the network's process is gone: nothing to wait for
			case <-time.After(leaveTimeout):
			}
		}
		conn.Close()
		watch.Wait()
	}
}

// leaveTimeout bounds the wait for the network to release a member.
const leaveTimeout = 5 * time.Second
