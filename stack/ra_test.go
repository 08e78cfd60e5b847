package stack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestRouterAdvert parses the frame with gVisor's NDP code, as a host's
// kernel would: every field and option must be where RFC 4861 puts it.
func TestRouterAdvert(t *testing.T) {
	mac := tcpip.LinkAddress("\x52\x55\x0a\x00\x02\x02")
	prefix := netip.MustParsePrefix("fd00::/64")
	dns := netip.MustParseAddr("fd00::3")
	frame := RouterAdvert(mac, prefix, 65520, dns)

	eth := header.Ethernet(frame)
	if eth.Type() != header.IPv6ProtocolNumber || eth.SourceAddress() != mac || eth.DestinationAddress() != "\x33\x33\x00\x00\x00\x01" {
		t.Fatalf("ethernet header %x", frame[:header.EthernetMinimumSize])
	}
	ip := header.IPv6(frame[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.HopLimit() != 255 || ip.SourceAddress() != tcpip.AddrFrom16(LinkLocal(mac).As16()) {
		t.Fatalf("IPv6 header: valid %v hop limit %d source %s", ip.IsValid(len(ip)), ip.HopLimit(), ip.SourceAddress())
	}
	icmp := header.ICMPv6(ip.Payload())
	if icmp.Type() != header.ICMPv6RouterAdvert || icmp.Code() != 0 {
		t.Fatalf("ICMPv6 type %d code %d", icmp.Type(), icmp.Code())
	}
	sum := icmp.Checksum()
	icmp.SetChecksum(0)
	if want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}); sum != want {
		t.Errorf("checksum %#x, want %#x", sum, want)
	}
	icmp.SetChecksum(sum)
	ra := header.NDPRouterAdvert(icmp.MessageBody())
	if ra.CurrHopLimit() != 64 || ra.RouterLifetime() == 0 || ra.ManagedAddrConfFlag() {
		t.Errorf("RA header: hop limit %d lifetime %v managed %v", ra.CurrHopLimit(), ra.RouterLifetime(), ra.ManagedAddrConfFlag())
	}
	it, err := ra.Options().Iter(true)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for {
		opt, done, err := it.Next()
		if err != nil {
			t.Fatalf("options: %v", err)
		}
		if done {
			break
		}
		switch o := opt.(type) {
		case header.NDPSourceLinkLayerAddressOption:
			seen["slla"] = o.EthernetAddress() == mac
		case header.NDPPrefixInformation:
			seen["prefix"] = o.Subnet().String() == "fd00::/64" && o.OnLinkFlag() && o.AutonomousAddressConfigurationFlag() && o.ValidLifetime() >= o.PreferredLifetime()
		case header.NDPRecursiveDNSServer:
			addrs, err := o.Addresses()
			seen["rdnss"] = err == nil && len(addrs) == 1 && addrs[0] == tcpip.AddrFrom16(dns.As16())
		}
	}
	for _, want := range []string{"slla", "prefix", "rdnss"} {
		if !seen[want] {
			t.Errorf("option %s missing or wrong (seen %v)", want, seen)
		}
	}
	// The MTU option is not in gVisor's iterator: check its bytes.
	if !containsMTUOption(ra.Options(), 65520) {
		t.Errorf("no MTU option with 65520")
	}
}

func containsMTUOption(opts []byte, mtu uint32) bool {
	for len(opts) >= 8 {
		l := int(opts[1]) * 8
		if l == 0 || l > len(opts) {
			return false
		}
		if opts[0] == 5 && l == 8 && uint32(opts[4])<<24|uint32(opts[5])<<16|uint32(opts[6])<<8|uint32(opts[7]) == mtu {
			return true
		}
		opts = opts[l:]
	}
	return false
}
