package main

// `rootlessnet network create|ls|inspect|rm`, and the network's own
// process (`network serve`, started by create).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/rootlessnet/rootlessnet/forwarder"
	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/netd"
	"github.com/rootlessnet/rootlessnet/network"
	"github.com/rootlessnet/rootlessnet/portfwd"
	"github.com/rootlessnet/rootlessnet/stack"
	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"github.com/rootlessnet/rootlessnet/vxlan"
)

const networkUsage = `Usage:
  rootlessnet network create NAME [--subnet CIDR] [--subnet6 CIDR] [-6] [--mtu N]
                             [--ip-range CIDR] [--vxlan [ADDR:]PORT [--vni N] [--vxlan-peer HOST:PORT]... [--gossip [ADDR:]PORT|none]]
  rootlessnet network peer add|rm NAME HOST:PORT
  rootlessnet network ls [--format json]
  rootlessnet network inspect NAME
  rootlessnet network rm [-f] NAME...

A network is a user's rootless bridge: members started with
'rootlessnet run --network NAME [--name HOST] [--ip ADDR] -- CMD' reach each
other by address and by name (HOST, HOST.NAME) through a kernel bridge, and
the outside world through rootlessnet's userspace NAT.
`

func networkCommand(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, networkUsage)
		return usageError{errors.New("network: want create, ls, inspect or rm")}
	}
	switch args[0] {
	case "create":
		return networkCreate(args[1:])
	case "ls", "list":
		return networkList(args[1:])
	case "inspect":
		return networkInspect(args[1:])
	case "rm", "remove":
		return networkRemove(args[1:])
	case "serve":
		return networkServe(args[1:])
	case "peer":
		return networkPeer(args[1:])
	case "-h", "--help", "help":
		fmt.Print(networkUsage)
		return errHelp
	}
	return usageError{fmt.Errorf("network: unknown command %q: want create, ls, inspect or rm", args[0])}
}

// networkStartTimeout bounds the wait for a new network's process.
const networkStartTimeout = 30 * time.Second

func networkCreate(args []string) error {
	fs := pflag.NewFlagSet("rootlessnet network create", pflag.ContinueOnError)
	subnet := fs.String("subnet", "", "IPv4 network of the members (default: the first free 10.89.N.0/24); gateway +1, DNS +2, members from +10")
	subnet6 := fs.String("subnet6", "", "IPv6 /64 network of the members (implies -6; default: the first free fd89:0:0:N::/64)")
	ipv6 := fs.BoolP("ipv6", "6", false, "IPv6 too")
	mtu := fs.Int("mtu", netd.DefaultMTU, "MTU of the members' links (with --vxlan: 1450 by default, 1500 less VXLAN's 50)")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "resolv.conf whose nameservers answer the members' DNS queries for names that are not members'")
	noLoopback := fs.Bool("disable-host-loopback", false, "refuse connections from members to the gateway address (the host's 127.0.0.1)")
	logLevel := fs.String("log-level", "info", "log level of the network's process (its log is in the network's state directory)")
	ipRange := fs.String("ip-range", "", "give this host's members addresses from this part of the subnet (hosts of one overlay need ranges of their own)")
	vxlanAt := fs.String("vxlan", "", "span the network across hosts over VXLAN: receive on [ADDR:]PORT of this host (e.g. 4789, or 192.0.2.1:4789); members' MTU defaults to 1450")
	vni := fs.Uint32("vni", 1, "with --vxlan: the network's VXLAN identifier, the same on every host")
	peers := fs.StringArray("vxlan-peer", nil, "with --vxlan: another host's VTEP, HOST:PORT (repeatable; 'network peer add' adds more later)")
	gossip := fs.String("gossip", "", "with --vxlan: [ADDR:]PORT where the hosts share their members' names (TCP and UDP, memberlist; default the --vxlan address, port 7946, the same port on every host); 'none': names stay on each host")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: rootlessnet network create NAME [flags]\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("network create: want one NAME")}
	}
	if _, err := newLogger(*logLevel); err != nil {
		return err
	}
	if !fs.Changed("mtu") {
		*mtu = 0 // the default for the kind of network
	}
	opts := netd.Options{Name: fs.Arg(0), IPv6: *ipv6, MTU: *mtu, ResolvConf: *resolvConf, DisableHostLoopback: *noLoopback}
	for _, s := range []struct {
		flag, v string
		dst     *netip.Prefix
	}{{"--subnet", *subnet, &opts.Subnet}, {"--subnet6", *subnet6, &opts.Subnet6}} {
		if s.v == "" {
			continue
		}
		p, err := netip.ParsePrefix(s.v)
		if err != nil {
			return usageError{fmt.Errorf("invalid %s %q: want a network such as 10.89.0.0/24", s.flag, s.v)}
		}
		*s.dst = p
	}
	if err := netd.ValidName("network", opts.Name); err != nil {
		return usageError{err}
	}
	if *ipRange != "" {
		p, err := netip.ParsePrefix(*ipRange)
		if err != nil {
			return usageError{fmt.Errorf("invalid --ip-range %q: want a network such as 10.89.0.128/25", *ipRange)}
		}
		opts.IPRange = p
	}
	if *vxlanAt != "" {
		v, err := parseVXLAN(*vxlanAt, *vni, *peers, *gossip)
		if err != nil {
			return usageError{err}
		}
		opts.VXLAN = v
	} else if fs.Changed("vni") || len(*peers) > 0 || *gossip != "" {
		return usageError{errors.New("--vni, --vxlan-peer and --gossip need --vxlan")}
	}
	state, err := netd.StateDir()
	if err != nil {
		return err
	}
	lock, err := netd.LockState(state)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	existing, err := netd.ReadConfigs(state)
	if err != nil {
		return err
	}
	paths := netd.PathsOf(state, opts.Name)
	for i, c := range existing {
		if c.Name != opts.Name {
			continue
		}
		if _, err := netd.Inspect(paths); !errors.Is(err, netd.ErrGone) {
			return fmt.Errorf("network %s already exists", opts.Name)
		}
		// A network whose process died: its name is free again.
		if err := os.RemoveAll(paths.Dir); err != nil {
			return fmt.Errorf("removing the remains of network %s: %w", opts.Name, err)
		}
		existing = append(existing[:i], existing[i+1:]...)
		break
	}
	if _, err := os.Stat(paths.Dir); err == nil {
		// A directory without a readable config: a create that died.
		os.RemoveAll(paths.Dir)
	}
	cfg, err := netd.NewConfig(opts, existing)
	if err != nil {
		return usageError{err}
	}
	if err := netd.WriteConfig(paths, cfg); err != nil {
		return fmt.Errorf("network %s: %w", cfg.Name, err)
	}
	if err := startNetworkProcess(paths, cfg, *logLevel); err != nil {
		os.RemoveAll(paths.Dir)
		return err
	}
	fmt.Println(cfg.Name)
	return nil
}

// parseVXLAN reads --vxlan [ADDR:]PORT, --vni, --vxlan-peer and --gossip.
func parseVXLAN(at string, vni uint32, peers []string, gossip string) (*netd.VXLAN, error) {
	v := &netd.VXLAN{VNI: vni}
	if port, err := strconv.ParseUint(at, 10, 16); err == nil && port > 0 {
		v.Listen = netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port))
	} else if ap, err := netip.ParseAddrPort(at); err == nil && ap.Port() > 0 {
		v.Listen = ap
	} else {
		return nil, fmt.Errorf("invalid --vxlan %q: want [ADDR:]PORT, such as 4789 or 192.0.2.1:4789", at)
	}
	if vni > vxlan.MaxVNI {
		return nil, fmt.Errorf("invalid --vni %d: want 0 to %d", vni, vxlan.MaxVNI)
	}
	for _, p := range peers {
		ap, err := netd.ParsePeer(p)
		if err != nil {
			return nil, fmt.Errorf("--vxlan-peer: %w", err)
		}
		v.Peers = append(v.Peers, ap)
	}
	switch {
	case gossip == "none":
	case gossip == "":
		v.Gossip = netip.AddrPortFrom(v.Listen.Addr(), netd.DefaultGossipPort)
	default:
		if port, err := strconv.ParseUint(gossip, 10, 16); err == nil && port > 0 {
			v.Gossip = netip.AddrPortFrom(v.Listen.Addr(), uint16(port))
		} else if ap, err := netip.ParseAddrPort(gossip); err == nil && ap.Port() > 0 {
			v.Gossip = ap
		} else {
			return nil, fmt.Errorf("invalid --gossip %q: want [ADDR:]PORT or none", gossip)
		}
	}
	return v, nil
}

// networkPeer is `network peer add|rm NAME HOST:PORT`.
func networkPeer(args []string) error {
	if len(args) != 3 || (args[0] != "add" && args[0] != "rm") {
		return usageError{errors.New("network peer: want add|rm NAME HOST:PORT")}
	}
	state, cfg, err := findNetwork(args[1])
	if err != nil {
		return err
	}
	if _, err := netd.ParsePeer(args[2]); err != nil {
		return usageError{err}
	}
	conn, err := netd.Dial(netd.PathsOf(state, cfg.Name))
	if err != nil {
		return fmt.Errorf("network %s: %w", cfg.Name, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	op := "peer-add"
	if args[0] == "rm" {
		op = "peer-rm"
	}
	_, _, err = netd.Call(conn, netd.Request{Op: op, Peer: args[2]})
	return err
}

// startNetworkProcess starts `network serve` in a session of its own,
// logging to the network's log, and waits until it serves.
func startNetworkProcess(paths netd.Paths, cfg netd.Config, logLevel string) error {
	logf, err := os.OpenFile(paths.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	cmd := exec.Command("/proc/self/exe", "network", "serve", "--log-level", logLevel, paths.Dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("starting network %s's process: %w", cfg.Name, err)
	}
	// Not waited for: it outlives this command. Release keeps no handle.
	pid := cmd.Process.Pid
	defer cmd.Process.Release()
	readyR.SetReadDeadline(time.Now().Add(networkStartTimeout))
	msg, _ := io.ReadAll(io.LimitReader(readyR, 4096))
	if line := strings.TrimSpace(string(msg)); line != "ready" {
		syscall.Kill(pid, syscall.SIGKILL)
		if line == "" {
			line = "it exited before it was ready"
			if b, err := os.ReadFile(paths.Log()); err == nil && len(b) > 0 {
				line += ": " + lastLine(string(b))
			}
		}
		return fmt.Errorf("network %s: %s", cfg.Name, line)
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// networkServe is the network's process: the hub child holding the
// bridge, the data path on its uplink TAP, and the control socket.
func networkServe(args []string) error {
	fs := pflag.NewFlagSet("rootlessnet network serve", pflag.ContinueOnError)
	logLevel := fs.String("log-level", "info", "log level")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("network serve: want the network's directory")}
	}
	ready := os.NewFile(3, "ready")
	// Inherited without close-on-exec: the hub child must not hold it
	// (create waits for its end).
	syscall.CloseOnExec(3)
	fail := func(err error) error {
		if ready != nil {
			fmt.Fprintln(ready, err)
			ready.Close()
		}
		return err
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return fail(err)
	}
	paths := netd.Paths{Dir: fs.Arg(0)}
	cfg, err := netd.ReadConfig(paths)
	if err != nil {
		return fail(err)
	}
	log = log.With("network", cfg.Name)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	hub, tapFile, err := launcher.StartHub(launcher.HubSetup{MTU: cfg.MTU, VnetHdr: true})
	if err != nil {
		return fail(fmt.Errorf("creating the network's namespace: %w", err))
	}
	defer hub.Close()
	names := netd.NewNames(cfg.Name)
	ncfg := network.Config{
		Tap:                 tapFile,
		MTU:                 cfg.MTU,
		Addressing:          stack.Addressing{Network: cfg.Subnet, Gateway: cfg.Gateway, DNS: cfg.DNS},
		DisableHostLoopback: cfg.DisableHostLoopback,
		VnetHdr:             true,
		TCPFastPath:         true,
		BusyPoll:            eventloop.DefaultBusyPoll,
		Names:               names,
		Bridged:             true,
		Log:                 log,
	}
	if cfg.Subnet6.IsValid() {
		ncfg.IPv6 = stack.Addressing6{Network: cfg.Subnet6, Gateway: cfg.Gateway6, DNS: cfg.DNS6}
	}
	ns, err := forwarder.ReadResolvConf(cfg.ResolvConf)
	if err != nil {
		log.Warn("DNS queries for other names than members' will get SERVFAIL", "err", err)
	}
	ncfg.Nameservers = ns
	setStackProcs(true, 1)
	n, err := network.New(ncfg)
	if err != nil {
		return fail(err)
	}
	defer n.Close()
	// Published ports reach members past the netstack, as run's do: the
	// link knows each member's MAC by its address (the fast path's
	// dialer asks the stack to resolve a member not heard from yet).
	engine := portfwd.NewEngine(n.Stack, stack.NICID, portfwd.Addresses{
		Gateway: cfg.Gateway, Gateway6: cfg.Gateway6,
	}, log)
	engine.SetGuestDialer(engine.FastDialer(fastLink{n.Fast}))
	engine.SetUDPShortcut(n.Fast)
	defer engine.Close()
	d, err := netd.NewDaemon(cfg, paths, hubPlugger{hub}, networkPorts{engine, log}, names, log)
	if err != nil {
		return fail(err)
	}
	if v := cfg.VXLAN; v != nil {
		tun, err := startOverlay(cfg, hub, log)
		if err != nil {
			return fail(err)
		}
		defer tun.Close()
		var g *netd.Gossip
		if v.Gossip.IsValid() {
			peers := make([]netip.Addr, len(v.Peers))
			for i, p := range v.Peers {
				peers[i] = p.Addr()
			}
			if g, err = netd.StartGossip(v.Gossip, peers, names, log.With("component", "gossip")); err != nil {
				return fail(err)
			}
			defer g.Close()
		}
		d.SetOverlay(tun, g)
		log.Info("overlay", "listen", v.Listen, "vni", v.VNI, "peers", v.Peers, "gossip", v.Gossip)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve() }()
	defer func() {
		d.Close()
		<-served
	}()
	fmt.Fprintln(ready, "ready")
	ready.Close()
	ready = nil
	log.Info("network ready", "subnet", cfg.Subnet, "gateway", cfg.Gateway, "dns", cfg.DNS, "pid", os.Getpid())
	select {
	case sig := <-sigs:
		log.Info("stopping", "signal", sig)
		d.StopMembers()
	case <-d.Stopped():
		log.Info("stopping: network rm")
	case <-n.Done():
		log.Error("the data path stopped", "err", n.Err())
		return n.Err()
	}
	// Members asked to stop leave as their commands end.
	if !d.WaitMembers(memberStopTimeout) {
		log.Warn("members still running; their network ends now", "members", len(d.Members()))
	}
	return nil
}

// startOverlay opens the overlay's UDP socket on the host and a bridge
// port for the tunnel (member id 0, which no member gets).
func startOverlay(cfg netd.Config, hub *launcher.Hub, log *slog.Logger) (*vxlan.Tunnel, error) {
	v := cfg.VXLAN
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(v.Listen))
	if err != nil {
		return nil, fmt.Errorf("--vxlan %s: %w", v.Listen, err)
	}
	port, err := hub.Tap(0, cfg.MTU)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("the overlay's bridge port: %w", err)
	}
	gw := stack.GatewayMAC(stack.Addressing{Network: cfg.Subnet, Gateway: cfg.Gateway, DNS: cfg.DNS})
	return vxlan.Start(vxlan.Config{
		Conn: conn, Port: port, VNI: v.VNI, MTU: cfg.MTU,
		Local: net.HardwareAddr(gw),
		Log:   log.With("component", "vxlan"),
	}, v.Peers), nil
}

// memberStopTimeout bounds the wait for stopped members to leave.
const memberStopTimeout = 10 * time.Second

// networkPorts gives netd the engine, with members' -p auto.
type networkPorts struct {
	*portfwd.Engine
	log *slog.Logger
}

func (p networkPorts) Auto(guest portfwd.Addresses, lister portfwd.SocketLister, pubs []portfwd.Publish) io.Closer {
	a := portfwd.StartAutoFor(p.Engine, guest, lister, pubs, portfwd.AutoInterval, p.log)
	return closerFunc(a.Close)
}

type closerFunc func()

func (f closerFunc) Close() error {
	f()
	return nil
}

// hubPlugger adds the network's user namespace to launcher.Hub.
type hubPlugger struct{ *launcher.Hub }

func (h hubPlugger) UserNS() (*os.File, error) {
	return os.Open(fmt.Sprintf("/proc/%d/ns/user", h.Pid()))
}

// networkStatus is one network as ls and inspect show it.
type networkStatus struct {
	netd.Config
	Running bool              `json:"running"`
	Pid     int               `json:"pid,omitempty"`
	Members []netd.MemberInfo `json:"members"`
	Overlay *netd.OverlayInfo `json:"overlay,omitempty"`
}

func readStatus(state string, cfg netd.Config) networkStatus {
	st := networkStatus{Config: cfg, Members: []netd.MemberInfo{}}
	r, err := netd.Inspect(netd.PathsOf(state, cfg.Name))
	if err == nil {
		st.Running = true
		st.Pid = r.Pid
		st.Overlay = r.Overlay
		if r.Members != nil {
			st.Members = r.Members
		}
	}
	return st
}

func networkList(args []string) error {
	fs := pflag.NewFlagSet("rootlessnet network ls", pflag.ContinueOnError)
	format := fs.String("format", "table", "table or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return usageError{fmt.Errorf("invalid --format %q: want table or json", *format)}
	}
	state, err := netd.StateDir()
	if err != nil {
		return err
	}
	cfgs, err := netd.ReadConfigs(state)
	if err != nil {
		return err
	}
	all := make([]networkStatus, 0, len(cfgs))
	for _, c := range cfgs {
		all = append(all, readStatus(state, c))
	}
	if *format == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSUBNETS\tMEMBERS\tSTATUS")
	for _, st := range all {
		subnets := st.Subnet.String()
		if st.Subnet6.IsValid() {
			subnets += "," + st.Subnet6.String()
		}
		status := "running"
		if !st.Running {
			status = "dead (its process is gone: network rm " + st.Name + ")"
		}
		names := make([]string, len(st.Members))
		for i, m := range st.Members {
			names[i] = m.Name
		}
		members := strings.Join(names, ",")
		if members == "" {
			members = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", st.Name, subnets, members, status)
	}
	return tw.Flush()
}

func networkInspect(args []string) error {
	fs := pflag.NewFlagSet("rootlessnet network inspect", pflag.ContinueOnError)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("network inspect: want one NAME")}
	}
	state, cfg, err := findNetwork(fs.Arg(0))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(readStatus(state, cfg))
}

// findNetwork returns the state dir and the config of network name.
func findNetwork(name string) (string, netd.Config, error) {
	if err := netd.ValidName("network", name); err != nil {
		return "", netd.Config{}, usageError{err}
	}
	state, err := netd.StateDir()
	if err != nil {
		return "", netd.Config{}, err
	}
	cfg, err := netd.ReadConfig(netd.PathsOf(state, name))
	if errors.Is(err, os.ErrNotExist) {
		return "", netd.Config{}, fmt.Errorf("no network named %s (rootlessnet network ls lists them)", name)
	}
	return state, cfg, err
}

func networkRemove(args []string) error {
	fs := pflag.NewFlagSet("rootlessnet network rm", pflag.ContinueOnError)
	force := fs.BoolP("force", "f", false, "stop the network's running members")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{errors.New("network rm: want a NAME")}
	}
	var errs []error
	for _, name := range fs.Args() {
		if err := removeNetwork(name, *force); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// networkStopTimeout bounds rm's wait for the network's process to end
// (its members stop first with -f).
const networkStopTimeout = memberStopTimeout + 10*time.Second

func removeNetwork(name string, force bool) error {
	state, cfg, err := findNetwork(name)
	if err != nil {
		return err
	}
	lock, err := netd.LockState(state)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	paths := netd.PathsOf(state, cfg.Name)
	err = netd.Stop(paths, force)
	switch {
	case errors.Is(err, netd.ErrGone):
		// Dead already: only its state is left.
	case err != nil:
		return err
	default:
		// The process removes its control socket as it ends.
		deadline := time.Now().Add(networkStopTimeout)
		for {
			if _, err := os.Stat(paths.Control()); errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("network %s did not stop within %v", name, networkStopTimeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return os.RemoveAll(paths.Dir)
}
