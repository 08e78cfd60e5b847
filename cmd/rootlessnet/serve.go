package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/rootlessnet/rootlessnet/forwarder"
	"github.com/rootlessnet/rootlessnet/network"
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
	return n, func() {
		n.Close()
		if pcap != nil {
			pcap.Close()
		}
	}, nil
}
