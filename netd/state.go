// Package netd is a rootless network's process: the state of the user's
// networks on disk, the members of one network (names, addresses,
// published ports), and the control socket through which `rootlessnet
// run --network`, `network ls/inspect/rm` talk to it.
package netd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Config is a network as created; it is stored as config.json in the
// network's directory and does not change while the network lives.
type Config struct {
	Name     string       `json:"name"`
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	DNS      netip.Addr   `json:"dns"`
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	DNS6     netip.Addr   `json:"dns6,omitzero"`
	MTU      int          `json:"mtu"`
	// ResolvConf names the upstream nameservers, read at start.
	ResolvConf          string `json:"resolv_conf"`
	DisableHostLoopback bool   `json:"disable_host_loopback,omitempty"`
	// IPRange is where this host's members get their addresses (the
	// whole subnet when not set): hosts of one overlay need ranges of
	// their own.
	IPRange netip.Prefix `json:"ip_range,omitzero"`
	// VXLAN, when set, spans the network across hosts.
	VXLAN *VXLAN `json:"vxlan,omitempty"`
}

// VXLAN is an overlay network's tunnel: this host's VTEP, the network's
// identifier and the other hosts' VTEPs at start.
type VXLAN struct {
	Listen netip.AddrPort   `json:"listen"`
	VNI    uint32           `json:"vni"`
	Peers  []netip.AddrPort `json:"peers,omitempty"`
	// Gossip is where the hosts share their members' names
	// (memberlist); invalid: names stay on each host.
	Gossip netip.AddrPort `json:"gossip,omitzero"`
}

// Addresses within a network: the gateway is network+1, as docker and
// podman have it; the DNS server is network+2 (the gateway's own port 53
// is the host loopback's, reached through the gateway); members get
// addresses from network+10 up.
const (
	gatewayOffset     = 1
	dnsOffset         = 2
	firstMemberOffset = 10
)

// DefaultUnderlayMTU is the hosts' network's MTU an overlay assumes.
const DefaultUnderlayMTU = 1500

// vxlanOverhead is what VXLAN over IPv4 adds (vxlan.Overhead).
const vxlanOverhead = 50

// DefaultMTU is the members' MTU: with 65520, member-to-member TCP over
// the bridge measured 0.94x the host's loopback, against 0.64x at 1500
// (docs/networks.md).
const DefaultMTU = 65520

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$`)

// ValidName checks a network's or a member's name: a DNS label (letters,
// digits, '-' and '_', at most 63, not starting with a punctuation mark).
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: want letters, digits, '-' or '_' (at most 63, starting with a letter or digit)", kind, name)
	}
	return nil
}

// StateDir returns the directory that holds the user's networks:
// $XDG_RUNTIME_DIR/rootlessnet, or /tmp/rootlessnet-UID when that is
// unset. It is created private (0700); one that another user owns or
// others can write is refused.
func StateDir() (string, error) {
	var dir string
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
		dir = filepath.Join(rt, "rootlessnet")
	} else {
		dir = filepath.Join(os.TempDir(), "rootlessnet-"+strconv.Itoa(os.Getuid()))
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("state directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Getuid() || st.Mode&0o022 != 0 {
		return "", fmt.Errorf("state directory %s is not a private directory of this user (uid %d): remove it or set XDG_RUNTIME_DIR", dir, os.Getuid())
	}
	if err := os.MkdirAll(filepath.Join(dir, "networks"), 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	return dir, nil
}

// Paths of one network's files.
type Paths struct{ Dir string }

// PathsOf returns where network name's files live under the state dir.
func PathsOf(state, name string) Paths {
	return Paths{Dir: filepath.Join(state, "networks", name)}
}

func (p Paths) Config() string  { return filepath.Join(p.Dir, "config.json") }
func (p Paths) Control() string { return filepath.Join(p.Dir, "control.sock") }
func (p Paths) Log() string     { return filepath.Join(p.Dir, "log") }

// Lock holds the state directory's lock: creating, removing and listing
// networks take it, so that two creates never pick one subnet or name.
type Lock struct{ f *os.File }

// LockState takes the state directory's lock, waiting for it.
func LockState(state string) (*Lock, error) {
	f, err := os.OpenFile(filepath.Join(state, "lock"), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() { l.f.Close() }

// ReadConfigs returns the configs of every network in the state dir, by
// name.
func ReadConfigs(state string) ([]Config, error) {
	entries, err := os.ReadDir(filepath.Join(state, "networks"))
	if err != nil {
		return nil, err
	}
	var cfgs []Config
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		cfg, err := ReadConfig(PathsOf(state, e.Name()))
		if err != nil {
			continue // half-created or foreign: not a network
		}
		cfgs = append(cfgs, cfg)
	}
	sort.Slice(cfgs, func(i, j int) bool { return cfgs[i].Name < cfgs[j].Name })
	return cfgs, nil
}

// ReadConfig reads one network's config.
func ReadConfig(p Paths) (Config, error) {
	b, err := os.ReadFile(p.Config())
	if err != nil {
		return Config{}, err
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return Config{}, fmt.Errorf("%s: %w", p.Config(), err)
	}
	return cfg, nil
}

// WriteConfig stores cfg in its directory (created), atomically.
func WriteConfig(p Paths, cfg Config) error {
	if err := os.Mkdir(p.Dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	tmp := p.Config() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.Config())
}

// Options are what `network create` was given; zero values pick defaults.
type Options struct {
	Name    string
	Subnet  netip.Prefix
	Subnet6 netip.Prefix
	IPv6    bool
	MTU     int
	// ResolvConf and DisableHostLoopback are kept as given.
	ResolvConf          string
	DisableHostLoopback bool
	IPRange             netip.Prefix
	VXLAN               *VXLAN
}

// reservedSubnet is slirp4netns' and `run`'s network, which a member's
// host may itself be using: no network overlaps it.
var reservedSubnet = netip.MustParsePrefix("10.0.2.0/24")

// NewConfig validates opts against the existing networks and picks what
// opts leave open: 10.89.N.0/24 and fd89:0:0:N::/64 for the lowest N that
// overlaps no other network.
func NewConfig(opts Options, existing []Config) (Config, error) {
	if err := ValidName("network", opts.Name); err != nil {
		return Config{}, err
	}
	for _, c := range existing {
		if c.Name == opts.Name {
			return Config{}, fmt.Errorf("network %s already exists", opts.Name)
		}
	}
	cfg := Config{Name: opts.Name, MTU: opts.MTU, ResolvConf: opts.ResolvConf, DisableHostLoopback: opts.DisableHostLoopback, VXLAN: opts.VXLAN}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
		if cfg.VXLAN != nil {
			// Frames cross the hosts' network, commonly of MTU 1500,
			// in UDP: as the kernel's vxlan sizes its device.
			cfg.MTU = DefaultUnderlayMTU - vxlanOverhead
		}
	}
	if v := cfg.VXLAN; v != nil {
		if v.VNI > 1<<24-1 {
			return Config{}, fmt.Errorf("invalid --vni %d: want 0 to %d", v.VNI, 1<<24-1)
		}
		if !v.Listen.IsValid() || v.Listen.Port() == 0 {
			return Config{}, errors.New("invalid --vxlan: want [ADDR:]PORT")
		}
	}
	if cfg.MTU < 1280 || cfg.MTU > 65520 {
		return Config{}, fmt.Errorf("invalid --mtu %d: want 1280 to 65520", cfg.MTU)
	}
	overlaps := func(p netip.Prefix) string {
		if p.Overlaps(reservedSubnet) {
			return reservedSubnet.String() + " (slirp4netns' and run's network)"
		}
		for _, c := range existing {
			if c.Subnet.Overlaps(p) {
				return fmt.Sprintf("network %s's %s", c.Name, c.Subnet)
			}
			if c.Subnet6.IsValid() && c.Subnet6.Overlaps(p) {
				return fmt.Sprintf("network %s's %s", c.Name, c.Subnet6)
			}
		}
		return ""
	}
	if opts.Subnet.IsValid() {
		p := opts.Subnet
		if !p.Addr().Is4() || p.Masked() != p || p.Bits() < 8 || p.Bits() > 28 {
			return Config{}, fmt.Errorf("invalid --subnet %s: want an IPv4 network address with a prefix of /8 to /28, such as 10.89.0.0/24", p)
		}
		if o := overlaps(p); o != "" {
			return Config{}, fmt.Errorf("--subnet %s overlaps %s", p, o)
		}
		cfg.Subnet = p
	} else {
		for n := 0; n < 256 && !cfg.Subnet.IsValid(); n++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 89, byte(n), 0}), 24)
			if overlaps(p) == "" {
				cfg.Subnet = p
			}
		}
		if !cfg.Subnet.IsValid() {
			return Config{}, errors.New("no free subnet in 10.89.0.0/16: give one with --subnet")
		}
	}
	if opts.Subnet6.IsValid() || opts.IPv6 {
		if opts.Subnet6.IsValid() {
			p := opts.Subnet6
			if !p.Addr().Is6() || p.Addr().Is4In6() || p.Masked() != p || p.Bits() != 64 {
				return Config{}, fmt.Errorf("invalid --subnet6 %s: want an IPv6 /64 network such as fd89::/64", p)
			}
			if o := overlaps(p); o != "" {
				return Config{}, fmt.Errorf("--subnet6 %s overlaps %s", p, o)
			}
			cfg.Subnet6 = p
		} else {
			for n := 0; n < 65536 && !cfg.Subnet6.IsValid(); n++ {
				p := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x89, 6: byte(n >> 8), 7: byte(n)}), 64)
				if overlaps(p) == "" {
					cfg.Subnet6 = p
				}
			}
		}
		cfg.Gateway6 = offset(cfg.Subnet6, gatewayOffset)
		cfg.DNS6 = offset(cfg.Subnet6, dnsOffset)
	}
	cfg.Gateway = offset(cfg.Subnet, gatewayOffset)
	cfg.DNS = offset(cfg.Subnet, dnsOffset)
	if r := opts.IPRange; r.IsValid() {
		if !r.Addr().Is4() || r.Masked() != r || !cfg.Subnet.Contains(r.Addr()) || r.Bits() < cfg.Subnet.Bits() {
			return Config{}, fmt.Errorf("invalid --ip-range %s: want a network inside %s", r, cfg.Subnet)
		}
		cfg.IPRange = r
	}
	return cfg, nil
}

// offset returns p's network address plus n.
func offset(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for ; n > 0; n-- {
		a = a.Next()
	}
	return a
}

// MemberAddress returns the i-th member address (0-based) of p, and
// false past the end of the network (its broadcast address excluded).
func MemberAddress(p netip.Prefix, i int) (netip.Addr, bool) {
	a := offset(p, firstMemberOffset+i)
	last := lastAddr(p)
	if !p.Contains(a) || a == last || a.Compare(last) > 0 {
		return netip.Addr{}, false
	}
	return a, true
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		bit := i * 8
		if bit+8 <= p.Bits() {
			continue
		}
		keep := max(p.Bits()-bit, 0)
		b[i] |= byte(0xff >> keep)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
