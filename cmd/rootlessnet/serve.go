package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/forwarder"
	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/network"
	"github.com/rootlessnet/rootlessnet/portfwd"
	"github.com/rootlessnet/rootlessnet/stack"
	"github.com/rootlessnet/rootlessnet/stack/fastpath"
)

// startNetwork wires the data path on an open TAP, whose queues taps are
// (one fd, or one per queue of a multi-queue TAP). The returned closer
// stops it and flushes the pcap file. A container whose interface was
// not configured learns its IPv6 network from router advertisements.
// dialer, when not nil (--port-bypass), makes the guest side of published
// TCP ports; sockDiag, with -p auto, lists the container's sockets.
// startNetwork owns both: the closer, or an error, closes them.
func startNetwork(o *options, log *slog.Logger, taps []*os.File, configured bool, dialer *launcher.Dialer, sockDiag *os.File) (_ *network.Network, _ func(), err error) {
	setStackProcs(o.tcpFastPath && o.pcap == "", len(taps))
	var lister *portfwd.SockDiag
	tapFile := taps[0]
	closeTaps := func() {
		for _, f := range taps {
			f.Close()
		}
	}
	defer func() {
		if err != nil && dialer != nil {
			dialer.Close()
		}
		if err != nil && lister != nil {
			lister.Close() // again after stop: harmless
		} else if err != nil && sockDiag != nil {
			sockDiag.Close()
		}
	}()
	if len(o.autos) > 0 {
		if sockDiag == nil {
			closeTaps()
			return nil, nil, errors.New("-p auto: no sock_diag socket from the container's namespace")
		}
		if lister, err = portfwd.NewSockDiag(sockDiag); err != nil { // it closes sockDiag on error
			sockDiag = nil
			closeTaps()
			return nil, nil, fmt.Errorf("-p auto: %w", err)
		}
	} else if sockDiag != nil {
		sockDiag.Close()
		sockDiag = nil
	}
	cfg := network.Config{
		Tap:                 tapFile,
		MoreQueues:          taps[1:],
		AutoQueues:          o.queues.auto,
		MTU:                 o.mtu,
		Addressing:          o.addressing,
		IPv6:                o.addressing6,
		RouterAdverts:       !configured,
		DisableHostLoopback: o.disableHostLoopback,
		DisableDNS:          o.disableDNS,
		VnetHdr:             o.offload,
		TCPFastPath:         o.tcpFastPath,
		BusyPoll:            o.busyPoll,
		Log:                 log,
	}
	if !o.disableDNS {
		ns, err := forwarder.ReadResolvConf(o.resolvConf)
		if err != nil {
			log.Warn("DNS queries will get SERVFAIL", "err", err)
		} else if len(ns) == 0 {
			log.Warn("no nameserver in resolv.conf: DNS queries will get SERVFAIL", "path", o.resolvConf)
		}
		cfg.Nameservers = ns
	}
	if o.outboundAddr != "" || o.outboundAddr6 != "" {
		d, err := outboundDialer(o.outboundAddr, o.outboundAddr6)
		if err != nil {
			closeTaps()
			return nil, nil, err
		}
		cfg.Dialer = d
	}
	var pcap *os.File
	if o.pcap != "" {
		f, err := os.OpenFile(o.pcap, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			closeTaps()
			return nil, nil, fmt.Errorf("--pcap: %w", err)
		}
		pcap = f
		cfg.Pcap = io.Writer(f)
	}
	n, err := network.New(cfg)
	if err != nil {
		if pcap != nil {
			pcap.Close()
		}
		return nil, nil, err
	}
	if len(taps) > 1 {
		log.Debug("multi-queue TAP", "queues", len(taps))
	}
	n.Forwarder.SetMaxFlows(int(o.maxFlows))
	engine := portfwd.NewEngine(n.Stack, stack.NICID, portfwd.Addresses{
		Guest: o.addressing.Guest, Gateway: o.addressing.Gateway,
		Guest6: o.addressing6.Guest, Gateway6: o.addressing6.Gateway,
	}, log)
	switch {
	case dialer != nil:
		engine.SetGuestDialer(portfwd.Bypass(dialer))
		log.Debug("published TCP ports bypass the netstack", "dialer_pid", dialer.Pid())
	case o.tcpFastPath && o.pcap == "":
		engine.SetGuestDialer(engine.FastDialer(fastLink{n.Fast}))
	}
	if o.pcap == "" {
		// The capture must see every datagram.
		engine.SetUDPShortcut(n.Fast)
	}
	var api *portfwd.APIServer
	var auto *portfwd.Auto
	stop := func() {
		if auto != nil {
			auto.Close()
		}
		if lister != nil {
			lister.Close()
		}
		if api != nil {
			api.Close()
		}
		engine.Close()
		if dialer != nil {
			// After the engine: no dial is in flight any more.
			dialer.Close()
		}
		n.Close()
		if pcap != nil {
			pcap.Close()
		}
	}
	for _, spec := range o.ports {
		if _, err := engine.AddFrom(spec, portfwd.SourceFlag); err != nil {
			stop()
			return nil, nil, fmt.Errorf("publishing %s: %w", spec, err)
		}
	}
	if lister != nil {
		// After the -p ports, which win over automatic ones.
		auto = portfwd.StartAuto(engine, lister, o.autos, portfwd.AutoInterval, log)
	}
	if o.apiSocket != "" {
		a, err := portfwd.NewAPIServer(o.apiSocket, engine, log)
		if err != nil {
			stop()
			return nil, nil, err
		}
		api = a
		go func() {
			// Serve ends when Close (in stop) closes the listener.
			if err := a.Serve(); err != nil {
				log.Error("API socket", "err", err)
			}
		}()
	}
	return n, stop, nil
}

// outboundDialer binds host-side connections to an address, or to an
// interface by name (SO_BINDTODEVICE): v4 for IPv4 flows, v6 for IPv6.
// Either may be empty.
func outboundDialer(v4, v6 string) (*net.Dialer, error) {
	bind4, err := outboundBinder(v4, "--outbound-addr", false)
	if err != nil {
		return nil, err
	}
	bind6, err := outboundBinder(v6, "--outbound-addr6", true)
	if err != nil {
		return nil, err
	}
	// Bound in Control rather than with LocalAddr, which would tie the
	// dialer to one of TCP and UDP and one family.
	return &net.Dialer{Control: func(network, _ string, c syscall.RawConn) error {
		bind := bind4
		if strings.HasSuffix(network, "6") {
			bind = bind6
		}
		if bind == nil {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = bind(int(fd)) }); err != nil {
			return err
		}
		return serr
	}}, nil
}

// outboundBinder parses one --outbound-addr value: nil when empty.
func outboundBinder(v, flag string, want6 bool) (func(fd int) error, error) {
	if v == "" {
		return nil, nil
	}
	if a, err := netip.ParseAddr(v); err == nil {
		switch {
		case want6 && (!a.Is6() || a.Is4In6()):
			return nil, usageError{fmt.Errorf("invalid %s %q: want an IPv6 address", flag, v)}
		case !want6 && !a.Is4():
			return nil, usageError{fmt.Errorf("invalid %s %q: want an IPv4 address", flag, v)}
		case want6:
			sa := &unix.SockaddrInet6{Addr: a.As16()}
			if a.Zone() != "" {
				ifi, err := net.InterfaceByName(a.Zone())
				if err != nil {
					return nil, usageError{fmt.Errorf("invalid %s %q: %w", flag, v, err)}
				}
				sa.ZoneId = uint32(ifi.Index)
			}
			return func(fd int) error { return unix.Bind(fd, sa) }, nil
		default:
			sa := &unix.SockaddrInet4{Addr: a.As4()}
			return func(fd int) error { return unix.Bind(fd, sa) }, nil
		}
	}
	if _, err := net.InterfaceByName(v); err != nil {
		return nil, usageError{fmt.Errorf("invalid %s %q: neither an address nor an interface", flag, v)}
	}
	return func(fd int) error { return unix.BindToDevice(fd, v) }, nil
}

// fastLink gives portfwd the link's TCP fast path, with the fast path's
// "netstack instead" error as portfwd's.
type fastLink struct{ fast *fastpath.Path }

func (l fastLink) DialTCPFast(ctx context.Context, src, dst netip.AddrPort, host *net.TCPConn) (func(context.Context), error) {
	run, err := l.fast.DialTCP(ctx, src, dst, host)
	if errors.Is(err, fastpath.ErrUnavailable) {
		err = fmt.Errorf("%w: %w", portfwd.ErrFastUnavailable, err)
	}
	return run, err
}
