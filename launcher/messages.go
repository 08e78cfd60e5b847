// Package launcher holds rootlessnet's roles: the parent, which runs the
// stack in the host's namespaces, and children, re-executed rootlessnets
// inside the container's namespaces: one opens and configures the TAP
// and, in run mode, becomes the command; with --port-bypass another one,
// the dialer, stays and makes the guest side of published TCP ports'
// connections. They talk in the typed messages below over a userns.Conn.
package launcher

import "time"

// Roles of the child (userns.RoleEnv's value).
const (
	RoleRun    = "run"
	RoleAttach = "attach"
	RoleDialer = "dialer"
)

// SetupRequest asks the child to open the TAP (parent -> child).
type SetupRequest struct {
	Tap string
	// VnetHdr opens the TAP with virtio-net headers (for offloads).
	VnetHdr bool
	// Queues, above 1, opens a multi-queue TAP with that many queues
	// (tap.OpenQueues), an fd each.
	Queues int
	// QueuesOptional: fewer queues than Queues are no cause for a
	// warning (--queues auto, on a TAP without multi-queue).
	QueuesOptional bool `json:",omitempty"`
	Configure      bool
	MTU            int
	MAC            string
	Address        string // guest address with prefix, when Configure
	Gateway        string // default route, when Configure
	// Address6 and Gateway6 are the same for IPv6 (empty when off).
	Address6 string
	Gateway6 string
	// ResolvConf is a file to bind-mount over /etc/resolv.conf (run mode).
	ResolvConf string
	// Command is what a run-mode child executes after StartRequest.
	Command []string
	// SockDiag asks for a NETLINK_SOCK_DIAG socket made in the
	// namespace too (-p auto lists the container's sockets with it).
	SockDiag bool
	// Member: the child is a member of a rootless network, in namespaces
	// of its own inside the network's user namespace. It opens no TAP:
	// it sends its network namespace (MemberNetNS), the parent has the
	// network plug it into the bridge, and the child configures the
	// link Tap names as it would a TAP.
	Member bool
	// Hostname, when set, is the member's host name (its own UTS
	// namespace).
	Hostname string
}

// MemberNetNS carries a member child's network namespace (child ->
// parent, the namespace's fd attached).
type MemberNetNS struct{}

// MemberAttached says the member's link is in its namespace, or why not
// (parent -> child).
type MemberAttached struct {
	Error string
}

// SetupReply answers SetupRequest (child -> parent), with the TAP's fds
// attached when Error is empty (Queues of them, one when 0), and then the
// sock_diag socket when asked.
type SetupReply struct {
	Error    string
	Warnings []string
	// Queues is the number of TAP fds attached: fewer than asked for
	// where the TAP refused more (a warning says why).
	Queues int `json:",omitempty"`
}

// StartRequest tells a run-mode child that the network is up: execute
// the command (parent -> child).
type StartRequest struct{}

// ExecReply says that the command could not be executed (child ->
// parent). A successful exec closes the channel instead.
type ExecReply struct {
	Error  string
	Status int
}

// DialerStart is the dialer's first message (parent -> dialer), with the
// stderr to log to attached: until then the dialer's stderr is a pipe
// the parent reads only to explain a failure to join the namespaces.
type DialerStart struct {
	LogLevel string
}

// DialerReady answers DialerStart (dialer -> parent): it serves dials.
type DialerReady struct {
	Error string
}

// DialRequest asks the dialer for a TCP connection made inside the
// container's network namespace (parent -> dialer). Address is a literal
// IP:port; Timeout bounds the connect (the dialer caps it).
type DialRequest struct {
	ID      uint64
	Network string // tcp, tcp4 or tcp6
	Address string
	Timeout time.Duration
}

// DialReply answers DialRequest (dialer -> parent), with the connected
// socket attached when Error is empty. Errno is the connect's errno, when
// it had one (ECONNREFUSED, ETIMEDOUT, ...).
type DialReply struct {
	ID    uint64
	Error string
	Errno int
}
