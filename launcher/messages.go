// Package launcher holds rootlessnet's two roles: the parent, which runs
// the stack in the host's namespaces, and the child, a re-executed
// rootlessnet inside the container's namespaces that opens and configures
// the TAP and, in run mode, becomes the command. They talk in the typed
// messages below over a userns.Conn.
package launcher

// Roles of the child (userns.RoleEnv's value).
const (
	RoleRun    = "run"
	RoleAttach = "attach"
)

// SetupRequest asks the child to open the TAP (parent -> child).
type SetupRequest struct {
	Tap string
	// VnetHdr opens the TAP with virtio-net headers (for offloads).
	VnetHdr   bool
	Configure bool
	MTU       int
	MAC       string
	Address   string // guest address with prefix, when Configure
	Gateway   string // default route, when Configure
	// Address6 and Gateway6 are the same for IPv6 (empty when off).
	Address6 string
	Gateway6 string
	// ResolvConf is a file to bind-mount over /etc/resolv.conf (run mode).
	ResolvConf string
	// Command is what a run-mode child executes after StartRequest.
	Command []string
}

// SetupReply answers SetupRequest (child -> parent), with the TAP fd
// attached when Error is empty.
type SetupReply struct {
	Error    string
	Warnings []string
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
