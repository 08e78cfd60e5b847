package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/rootlessnet/rootlessnet/forwarder"
	"github.com/rootlessnet/rootlessnet/portfwd"
	"github.com/rootlessnet/rootlessnet/stack"
	"github.com/rootlessnet/rootlessnet/stack/eventloop"
	"github.com/rootlessnet/rootlessnet/tap"
)

var errHelp = errors.New("help shown")

// options are the flags both forms share.
type options struct {
	mtu                 int
	cidr                string
	disableHostLoopback bool
	disableDNS          bool
	resolvConf          string
	pcap                string
	logLevel            string
	tapName             string
	macAddress          string
	publish             []string
	apiSocket           string
	outboundAddr        string
	offload             bool
	enableIPv6          bool
	cidr6               string
	outboundAddr6       string
	maxFlows            uint
	portBypass          bool
	tcpFastPath         bool
	busyPoll            time.Duration
	queues              queuesFlag

	addressing  stack.Addressing
	addressing6 stack.Addressing6 // invalid unless --enable-ipv6
	ports       []portfwd.Spec    // -p ports and ranges, one Spec per port
	autos       []portfwd.Publish // -p auto forms
}

func (o *options) register(fs *pflag.FlagSet) {
	fs.IntVarP(&o.mtu, "mtu", "m", stack.DefaultMTU, "MTU of the TAP")
	fs.StringVar(&o.cidr, "cidr", stack.DefaultCIDR, "IPv4 network of the container (gateway +2, DNS +3, guest +100)")
	fs.BoolVar(&o.disableHostLoopback, "disable-host-loopback", false, "refuse connections from the container to the gateway address (the host's 127.0.0.1)")
	fs.BoolVar(&o.disableDNS, "disable-dns", false, "do not forward DNS on the DNS address")
	fs.StringVar(&o.resolvConf, "resolv-conf", "/etc/resolv.conf", "resolv.conf whose nameservers receive the container's DNS queries")
	fs.StringVar(&o.pcap, "pcap", "", "write the TAP's traffic to this file as pcap")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.tapName, "tap", "tap0", "name of the TAP device in the namespace")
	fs.StringVar(&o.macAddress, "macaddress", "", "MAC address of the TAP (when rootlessnet configures it)")
	fs.StringArrayVarP(&o.publish, "publish", "p", nil, "publish ports (repeatable): [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]; ranges FIRST-LAST:FIRST-LAST of equal length; a lone PORT[-LAST] for the same port(s) on both sides; [HOST_IP:]auto[/tcp|/udp] to publish every port the container listens on (not on its loopback), on the same host port, while it listens (-p 127.0.0.1:auto keeps them on the host's loopback)")
	fs.StringVarP(&o.apiSocket, "api-socket", "a", "", "serve slirp4netns' JSON API (add_hostfwd, list_hostfwd, remove_hostfwd) on this unix socket ('rootlessnet ports -a PATH' lists the published ports through it)")
	fs.StringVar(&o.outboundAddr, "outbound-addr", "", "bind outgoing IPv4 connections to this address or interface")
	fs.BoolVarP(&o.enableIPv6, "enable-ipv6", "6", false, "IPv6 too: guest ::100, gateway ::2 (the host's ::1), DNS ::3 in --cidr6")
	fs.StringVar(&o.cidr6, "cidr6", stack.DefaultCIDR6, "IPv6 /64 network of the container, with --enable-ipv6")
	fs.StringVar(&o.outboundAddr6, "outbound-addr6", "", "bind outgoing IPv6 connections to this address or interface")
	fs.UintVar(&o.maxFlows, "max-flows", forwarder.DefaultMaxFlows, "most concurrent TCP and UDP flows from the container; more are refused (TCP RST, ICMP port unreachable); 0: no limit")
	fs.BoolVar(&o.portBypass, "port-bypass", false, "published TCP ports skip the netstack: a helper inside the container's namespaces connects to the guest port and rootlessnet splices between the two kernel sockets (under half the CPU per byte; faster where CPU is the limit), but the guest sees connections come from its own address instead of the client's; UDP ports are unchanged")
	fs.BoolVar(&o.tcpFastPath, "tcp-fastpath", true, "outbound TCP from the container skips the netstack: its segments become calls on host sockets, as in pasta (--tcp-fastpath=false: the netstack carries it, as before)")
	fs.DurationVar(&o.busyPoll, "busy-poll", eventloop.DefaultBusyPoll, "with the TCP fast path, how long a busy link's loop may poll for the next event before it sleeps, as the kernel's SO_BUSY_POLL (shorter request/response latency for some CPU; the window adapts and an idle link never polls); 0: never")
	o.queues = queuesFlag{auto: true}
	fs.Var(&o.queues, "queues", fmt.Sprintf("open the TAP with this many queues (IFF_MULTI_QUEUE), each read by a loop and thread of its own that serves the container's flows the kernel puts on it; 1 to %d (a TAP that exists without multi-queue gets one, with a warning); auto: one per CPU (at most %d), of which only the first is attached while at most one fast-path TCP flow is busy, and one per busy flow otherwise (a network's members: one)", tap.MaxQueues, maxAutoQueues))
	fs.BoolVar(&o.offload, "offload", true, "exchange 64 KiB TCP super-frames with the TAP (IFF_VNET_HDR, TSO, checksum offload)")
}

// validate checks the flags and derives the addressing.
func (o *options) validate() error {
	if err := stack.ValidateMTU(o.mtu); err != nil {
		return usageError{err}
	}
	a, err := stack.ParseCIDR(o.cidr)
	if err != nil {
		return usageError{err}
	}
	o.addressing = a
	// --cidr6 is checked even without -6, so that a typo is not silently
	// ignored.
	a6, err := stack.ParseCIDR6(o.cidr6)
	if err != nil {
		return usageError{err}
	}
	if o.enableIPv6 {
		o.addressing6 = a6
	}
	if _, err := outboundDialer(o.outboundAddr, o.outboundAddr6); err != nil {
		return err
	}
	if o.macAddress != "" {
		mac, err := net.ParseMAC(o.macAddress)
		if err != nil || len(mac) != 6 {
			return usageError{fmt.Errorf("invalid --macaddress %q: want six bytes such as 02:00:00:00:00:01", o.macAddress)}
		}
		if mac[0]&1 == 1 {
			return usageError{fmt.Errorf("invalid --macaddress %q: a multicast address cannot be a NIC's", o.macAddress)}
		}
	}
	// validate runs again once the slirp4netns form's TAPNAME is known:
	// parse the ports afresh rather than publish each twice.
	o.ports, o.autos = nil, nil
	pubs := make([]portfwd.Publish, 0, len(o.publish))
	for _, v := range o.publish {
		p, err := portfwd.ParsePublish(v)
		if err != nil {
			return usageError{err}
		}
		pubs = append(pubs, p)
		if p.Auto {
			o.autos = append(o.autos, p)
		} else {
			o.ports = append(o.ports, p.Specs()...)
		}
	}
	if err := portfwd.CheckPublishes(o.publish, pubs); err != nil {
		return usageError{err}
	}
	if o.busyPoll < 0 || o.busyPoll > eventloop.MaxBusyPoll {
		return usageError{fmt.Errorf("invalid --busy-poll %v: want 0 to %v", o.busyPoll, eventloop.MaxBusyPoll)}
	}
	if !o.queues.auto && (o.queues.n < 1 || o.queues.n > tap.MaxQueues) {
		return usageError{fmt.Errorf("invalid --queues %d: want 1 to %d, or auto", o.queues.n, tap.MaxQueues)}
	}
	if o.tapName == "" || len(o.tapName) > 15 {
		return usageError{fmt.Errorf("invalid --tap %q: want 1 to 15 characters", o.tapName)}
	}
	return nil
}

// parse parses args into fs, turning pflag's errors and -h into ours:
// help goes to stdout (clients grep it), errors to stderr in one line.
func parse(fs *pflag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		fs.SetOutput(os.Stdout)
		fs.Usage()
		return errHelp
	}
	if err != nil {
		return usageError{fmt.Errorf("%w (see --help)", err)}
	}
	return nil
}

// maxAutoQueues bounds --queues auto: more loops than that would compete
// with the container's own threads for the CPUs (measured on 2 CPUs only).
const maxAutoQueues = 4

// queuesFlag is --queues: a number of TAP queues, or auto.
type queuesFlag struct {
	n    int
	auto bool
}

func (q *queuesFlag) String() string {
	if q.auto {
		return "auto"
	}
	return strconv.Itoa(q.n)
}

func (q *queuesFlag) Set(s string) error {
	if s == "auto" {
		*q = queuesFlag{auto: true}
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("want a number of queues or auto")
	}
	*q = queuesFlag{n: n}
	return nil
}

func (q *queuesFlag) Type() string { return "N|auto" }

// count is how many queues to open: with auto, one per CPU, at most
// maxAutoQueues.
func (q queuesFlag) count() int {
	if q.auto {
		return max(1, min(runtime.NumCPU(), maxAutoQueues))
	}
	return q.n
}
