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

const publishUsage = "want [HOST_IP:]HOST_PORT[-LAST][:GUEST_PORT[-LAST]][/tcp|/udp] or [HOST_IP:]auto[/tcp|/udp]"

// Publish is one -p value: one port, a range of ports, or automatic
// forwarding of whatever the guest listens on.
type Publish struct {
	// Proto is tcp or udp; with Auto, "" stands for both.
	Proto    Proto
	HostAddr netip.Addr // 0.0.0.0 when not given
	// Auto: publish every port the guest listens on, on the same host
	// port (the ports and Count are zero).
	Auto bool
	// HostPort and GuestPort are the first ports of the range, Count its
	// length (1 for a single port).
	HostPort, GuestPort uint16
	Count               int
}

// Specs expands a port or range into its forwards (none for Auto).
func (p Publish) Specs() []Spec {
	if p.Auto {
		return nil
	}
	out := make([]Spec, 0, p.Count)
	for i := range p.Count {
		out = append(out, Spec{Proto: p.Proto, HostAddr: p.HostAddr, HostPort: p.HostPort + uint16(i), GuestPort: p.GuestPort + uint16(i)})
	}
	return out
}

// Protos are the protocols p publishes.
func (p Publish) Protos() []Proto {
	if p.Proto == "" {
		return []Proto{ProtoTCP, ProtoUDP}
	}
	return []Proto{p.Proto}
}

// String is the canonical form, which ParsePublish gives back:
// "0.0.0.0:8000-8010:9000-9010/tcp", "127.0.0.1:8080:80/udp",
// "[::1]:auto", "0.0.0.0:auto/tcp".
func (p Publish) String() string {
	host := p.HostAddr
	if !host.IsValid() {
		host = netip.IPv4Unspecified()
	}
	s := fmtAddr(host) + ":"
	if p.Auto {
		s += "auto"
		if p.Proto != "" {
			s += "/" + string(p.Proto)
		}
		return s
	}
	rng := func(first uint16) string {
		if p.Count <= 1 {
			return strconv.Itoa(int(first))
		}
		return strconv.Itoa(int(first)) + "-" + strconv.Itoa(int(first)+p.Count-1)
	}
	proto := p.Proto
	if proto == "" {
		proto = ProtoTCP
	}
	return s + rng(p.HostPort) + ":" + rng(p.GuestPort) + "/" + string(proto)
}

// ParsePublish parses one -p value, in the forms docker, podman and pasta
// take:
//
//	[HOST_IP:]HOST_PORT:GUEST_PORT[/PROTO]           8080:80, 127.0.0.1:8080:80/udp
//	[HOST_IP:]FIRST-LAST:FIRST-LAST[/PROTO]          8000-8010:9000-9010 (equal lengths)
//	[HOST_IP:]PORT[-LAST][/PROTO]                    8080, 127.0.0.1:8000-8010: same ports on both sides
//	[HOST_IP:]auto[/PROTO]                           every port the guest listens on
//
// HOST_IP is an IPv4 address or an IPv6 address in brackets
// ("[::1]:8080:80"); it defaults to 0.0.0.0, and so does an empty HOST_IP
// (":8080:80"). A lone PORT means that port on both sides, as with pasta
// (docker's "-p 8080" picks a random host port instead; rootlessnet has no
// random host ports). The protocol defaults to tcp, and to both tcp and udp
// for auto. Ports are 1..65535. ParsePublish never panics.
func ParsePublish(s string) (Publish, error) {
	p := Publish{HostAddr: netip.IPv4Unspecified()}
	bad := func(format string, args ...any) (Publish, error) {
		return Publish{}, fmt.Errorf("invalid publish %q: "+format, append([]any{s}, args...)...)
	}

	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		switch proto := rest[i+1:]; proto {
		case "tcp", "udp":
			p.Proto = Proto(proto)
		default:
			return bad("unsupported protocol %q, want tcp or udp", proto)
		}
		rest = rest[:i]
	}

	var parts []string
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return bad("missing ']' after IPv6 host address")
		}
		hostIP := rest[1:end]
		rest = rest[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return bad("%s", publishUsage)
		}
		a, err := netip.ParseAddr(hostIP)
		if err != nil || !a.Is6() {
			return bad("bad IPv6 host address %q", hostIP)
		}
		p.HostAddr = a
		parts = strings.Split(rest[1:], ":")
		if len(parts) > 2 {
			return bad("%s", publishUsage)
		}
	} else {
		parts = strings.Split(rest, ":")
		// An IPv4 address has dots and a port never does: "1.2.3.4:80"
		// is an address and a port, "8080:80" two ports.
		if len(parts) == 3 || (len(parts) == 2 && strings.Contains(parts[0], ".")) {
			if hostIP := parts[0]; hostIP != "" {
				a, err := netip.ParseAddr(hostIP)
				if err != nil || !a.Is4() {
					return bad("bad IPv4 host address %q", hostIP)
				}
				p.HostAddr = a
			}
			parts = parts[1:]
		} else if len(parts) > 3 {
			return bad("IPv6 host addresses must be in brackets, e.g. [::1]:8080:80")
		}
	}

	if len(parts) == 1 && parts[0] == "auto" {
		p.Auto = true
		return p, nil
	}
	if p.Proto == "" {
		p.Proto = ProtoTCP
	}
	host, n, err := parseRange(parts[0])
	if err != nil {
		return bad("bad host port %q: %v", parts[0], err)
	}
	p.HostPort, p.GuestPort, p.Count = host, host, n
	if len(parts) == 2 {
		guest, gn, err := parseRange(parts[1])
		if err != nil {
			return bad("bad guest port %q: %v", parts[1], err)
		}
		if gn != n {
			return bad("host ports %s (%d) and guest ports %s (%d): ranges of unequal length", parts[0], n, parts[1], gn)
		}
		p.GuestPort = guest
	}
	return p, nil
}

// parseRange parses PORT or FIRST-LAST (FIRST <= LAST) and returns the
// first port and the count.
func parseRange(s string) (uint16, int, error) {
	first, last, isRange := strings.Cut(s, "-")
	if isRange && first == "" {
		return 0, 0, fmt.Errorf("not a number 1..65535")
	}
	a, err := parsePort(first)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return a, 1, nil
	}
	b, err := parsePort(last)
	if err != nil {
		return 0, 0, err
	}
	if b < a {
		return 0, 0, fmt.Errorf("range ends before it starts")
	}
	return a, int(b-a) + 1, nil
}

// CheckPublishes returns an error naming both values when two -p values
// publish the same host port, protocol and address: equal or overlapping
// ranges, one address and the unspecified address of its family (they
// cannot both be bound), or two automatic forwards. An automatic forward
// and an explicit one do not conflict: the explicit one wins at run time.
// flags are the values as given, pubs their parses.
func CheckPublishes(flags []string, pubs []Publish) error {
	for i := range pubs {
		for j := range i {
			a, b := pubs[j], pubs[i]
			if !addrsOverlap(a.HostAddr, b.HostAddr) || !protosOverlap(a, b) || a.Auto != b.Auto {
				continue
			}
			if !a.Auto {
				lo := max(int(a.HostPort), int(b.HostPort))
				hi := min(int(a.HostPort)+a.Count, int(b.HostPort)+b.Count)
				if lo >= hi {
					continue
				}
				return fmt.Errorf("-p %s and -p %s both publish host port %d/%s", flags[j], flags[i], lo, commonProto(a, b))
			}
			return fmt.Errorf("-p %s and -p %s both publish automatic ports (%s)", flags[j], flags[i], commonProto(a, b))
		}
	}
	return nil
}

// addrsOverlap: the same address, or one of them the unspecified address
// of the other's family. [::] is IPv6 only, so it does not overlap 0.0.0.0.
func addrsOverlap(a, b netip.Addr) bool {
	a, b = a.Unmap(), b.Unmap()
	if a.Is4() != b.Is4() {
		return false
	}
	return a == b || a.IsUnspecified() || b.IsUnspecified()
}

func protosOverlap(a, b Publish) bool {
	return a.Proto == "" || b.Proto == "" || a.Proto == b.Proto
}

func commonProto(a, b Publish) string {
	switch {
	case a.Proto != "":
		return string(a.Proto)
	case b.Proto != "":
		return string(b.Proto)
	}
	return "tcp and udp"
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
// as tcp (the defaults of ParsePublish), so that ParsePublish gives back
// a single-port Spec from its String.
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
