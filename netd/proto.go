package netd

import (
	"net/netip"

	"github.com/rootlessnet/rootlessnet/portfwd"
	"github.com/rootlessnet/rootlessnet/vxlan"
)

// Request is one message to a network's control socket.
//
//   - "inspect": the network and its members.
//   - "join": become a member (Name, IP optional). The reply carries the
//     network's user namespace; the connection is the membership from
//     then on: closing it leaves the network.
//   - "plug": (a member) plug the attached network namespace into the
//     bridge.
//   - "publish": (a member) publish Ports to the member's address.
//   - "auto": (a member) publish what the member serves, as Autos (-p
//     auto) say, listing its sockets with the attached sock_diag socket.
//   - "leave": (a member) leave now, and say so once all is released,
//     so that the same name can join again at once.
//   - "peer-add", "peer-rm": add or remove an overlay's VTEP (Peer).
//   - "stop": end the network; refused while members run, unless Force,
//     which stops them.
type Request struct {
	Op    string            `json:"op"`
	Name  string            `json:"name,omitempty"`
	IP    string            `json:"ip,omitempty"`
	Pid   int               `json:"pid,omitempty"`
	Ports []portfwd.Spec    `json:"ports,omitempty"`
	Autos []portfwd.Publish `json:"autos,omitempty"`
	Force bool              `json:"force,omitempty"`
	Peer  string            `json:"peer,omitempty"`
}

// Reply answers a Request. The network sends a member's connection an
// unasked Reply with Stop set when `network rm -f` stops it.
type Reply struct {
	Error   string       `json:"error,omitempty"`
	Network *Config      `json:"network,omitempty"`
	Members []MemberInfo `json:"members,omitempty"`
	Member  *MemberInfo  `json:"member,omitempty"`
	Stop    bool         `json:"stop,omitempty"`
	// Left answers "leave": the member's name, address and ports are
	// free.
	Left bool `json:"left,omitempty"`
	// Pid is the network's process (inspect).
	Pid int `json:"pid,omitempty"`
	// Overlay is the tunnel's state (inspect, an overlay network).
	Overlay *OverlayInfo `json:"overlay,omitempty"`
}

// OverlayInfo is what inspect shows of an overlay's tunnel.
type OverlayInfo struct {
	Peers []netip.AddrPort `json:"peers"`
	// Hosts are the hosts sharing names (gossip), this one included.
	Hosts []string    `json:"hosts,omitempty"`
	Stats vxlan.Stats `json:"stats"`
}

// MemberInfo is what `network inspect` shows of a member.
type MemberInfo struct {
	Name     string     `json:"name"`
	Address  netip.Addr `json:"address"`
	Address6 netip.Addr `json:"address6,omitzero"`
	Ports    []string   `json:"ports,omitempty"`
	Pid      int        `json:"pid,omitempty"`
}
