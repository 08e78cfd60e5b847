// Package portfwd holds the host-to-guest port forwarding types shared by the
// command line (-p/--publish) and the slirp4netns-compatible JSON API socket.
package portfwd

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is a transport protocol: "tcp" or "udp".
type Proto string

// The supported protocols.
const (
	ProtoTCP Proto = "tcp"
	ProtoUDP Proto = "udp"
)

// Spec describes one port forward from the host into the guest.
type Spec struct {
	Proto     Proto
	HostAddr  netip.Addr // unspecified 0.0.0.0 when not given
	HostPort  uint16
	GuestAddr netip.Addr // invalid (zero) = "the guest's default address", filled in by the caller
	GuestPort uint16
}

const publishUsage = "want [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]"

// ParsePublish parses the CLI form [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp],
// as accepted by podman and docker -p. HOST_IP is an IPv4 address or an IPv6
// address in brackets ("[::1]:8080:80"); it defaults to 0.0.0.0, and so does an
// empty HOST_IP (":8080:80"). The protocol defaults to tcp. Ports are 1..65535;
// ranges and random host ports are not supported. The returned Spec has a zero
// GuestAddr. ParsePublish never panics.
func ParsePublish(s string) (Spec, error) {
	spec := Spec{Proto: ProtoTCP, HostAddr: netip.IPv4Unspecified()}
	bad := func(format string, args ...any) (Spec, error) {
		return Spec{}, fmt.Errorf("invalid publish %q: "+format, append([]any{s}, args...)...)
	}

	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		switch p := rest[i+1:]; p {
		case "tcp", "udp":
			spec.Proto = Proto(p)
		default:
			return bad("unsupported protocol %q, want tcp or udp", p)
		}
		rest = rest[:i]
	}

	var hostIP string
	haveHostIP := false
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return bad("missing ']' after IPv6 host address")
		}
		hostIP, rest = rest[1:end], rest[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return bad("%s", publishUsage)
		}
		rest = rest[1:]
		a, err := netip.ParseAddr(hostIP)
		if err != nil || !a.Is6() {
			return bad("bad IPv6 host address %q", hostIP)
		}
		spec.HostAddr = a
		haveHostIP = true
	}

	parts := strings.Split(rest, ":")
	switch {
	case len(parts) == 2:
	case len(parts) == 3 && !haveHostIP:
		hostIP, parts = parts[0], parts[1:]
		if hostIP != "" {
			a, err := netip.ParseAddr(hostIP)
			if err != nil || !a.Is4() {
				return bad("bad IPv4 host address %q", hostIP)
			}
			spec.HostAddr = a
		}
	case len(parts) > 3 && !haveHostIP:
		return bad("IPv6 host addresses must be in brackets, e.g. [::1]:8080:80")
	default:
		return bad("%s", publishUsage)
	}

	var err error
	if spec.HostPort, err = parsePort(parts[0]); err != nil {
		return bad("bad host port %q: %v", parts[0], err)
	}
	if spec.GuestPort, err = parsePort(parts[1]); err != nil {
		return bad("bad guest port %q: %v", parts[1], err)
	}
	return spec, nil
}

// parsePort accepts a plain decimal port number 1..65535 (no sign, no spaces).
func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("empty, %s", publishUsage)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("not a number 1..65535")
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("out of range 1..65535")
	}
	return uint16(n), nil
}

// String returns the canonical form HOST_IP:HOST_PORT:GUEST_PORT/PROTO, with an
// IPv6 host address in brackets, e.g. "0.0.0.0:8080:80/tcp" or
// "[::1]:8080:80/udp". A zero HostAddr is shown as 0.0.0.0 and an empty Proto
// as tcp (the defaults of ParsePublish), so ParsePublish(s.String()) == s for
// every Spec that ParsePublish can return.
//
// The CLI form has no guest address: if GuestAddr is set it is shown before the
// guest port ("0.0.0.0:8080:10.0.2.100:80/tcp", "[::]:8080:[fd00::100]:80/tcp"),
// a form meant for logs that ParsePublish does not accept.
func (s Spec) String() string {
	proto := s.Proto
	if proto == "" {
		proto = ProtoTCP
	}
	host := s.HostAddr
	if !host.IsValid() {
		host = netip.IPv4Unspecified()
	}
	var b strings.Builder
	b.WriteString(fmtAddr(host))
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(int(s.HostPort)))
	b.WriteByte(':')
	if s.GuestAddr.IsValid() {
		b.WriteString(fmtAddr(s.GuestAddr))
		b.WriteByte(':')
	}
	b.WriteString(strconv.Itoa(int(s.GuestPort)))
	b.WriteByte('/')
	b.WriteString(string(proto))
	return b.String()
}

func fmtAddr(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}
