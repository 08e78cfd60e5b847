package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/forwarder"
	"github.com/rootlessnet/rootlessnet/network"
	"github.com/rootlessnet/rootlessnet/portfwd"
	"github.com/rootlessnet/rootlessnet/stack"
)

// startNetwork wires the data path on an open TAP. The returned closer
// stops it and flushes the pcap file.
func startNetwork(o *options, log *slog.Logger, tapFile *os.File) (*network.Network, func(), error) {
	cfg := network.Config{
		Tap:                 tapFile,
		MTU:                 o.mtu,
		Addressing:          o.addressing,
		DisableHostLoopback: o.disableHostLoopback,
		DisableDNS:          o.disableDNS,
		VnetHdr:             o.offload,
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
	if o.outboundAddr != "" {
		d, err := outboundDialer(o.outboundAddr)
		if err != nil {
			tapFile.Close()
			return nil, nil, err
		}
		cfg.Dialer = d
	}
	var pcap *os.File
	if o.pcap != "" {
		f, err := os.OpenFile(o.pcap, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			tapFile.Close()
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
	n.Forwarder.SetMaxFlows(int(o.maxFlows))
	engine := portfwd.NewEngine(n.Stack, stack.NICID, o.addressing.Guest, o.addressing.Gateway, log)
	var api *portfwd.APIServer
	stop := func() {
		if api != nil {
			api.Close()
		}
		engine.Close()
		n.Close()
		if pcap != nil {
			pcap.Close()
		}
	}
	for _, spec := range o.ports {
		if _, err := engine.Add(spec); err != nil {
			stop()
			return nil, nil, fmt.Errorf("publishing %s: %w", spec, err)
		}
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
// interface by name (SO_BINDTODEVICE).
func outboundDialer(v string) (*net.Dialer, error) {
	if a, err := netip.ParseAddr(v); err == nil {
		if !a.Is4() {
			return nil, fmt.Errorf("invalid --outbound-addr %q: want an IPv4 address", v)
		}
		// Bound in Control rather than with LocalAddr, which would tie
		// the dialer to one of TCP and UDP.
		return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.Bind(int(fd), &unix.SockaddrInet4{Addr: a.As4()}) })
			if err != nil {
				return err
			}
			return serr
		}}, nil
	}
	if _, err := net.InterfaceByName(v); err != nil {
		return nil, fmt.Errorf("invalid --outbound-addr %q: neither an address nor an interface", v)
	}
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), v) })
		if err != nil {
			return err
		}
		return serr
	}}, nil
}
