package forwarder

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// ParseResolvConf returns the nameservers of a resolv.conf, in order, as
// port-53 addresses. Zones on link-local IPv6 addresses are kept.
func ParseResolvConf(data []byte) []netip.AddrPort {
	var servers []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		servers = append(servers, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return servers
}

// ReadResolvConf reads the nameservers from path (symlinks followed, as
// with systemd-resolved's /etc/resolv.conf).
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading nameservers: %w", err)
	}
	return ParseResolvConf(data), nil
}
