package launcher

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/hub"
	"github.com/rootlessnet/rootlessnet/tap"
	"github.com/rootlessnet/rootlessnet/userns"
)

// ChildMain runs the child's role and returns its exit status. It is
// called first thing in main when userns.ChildConn reports a role.
func ChildMain(conn *userns.Conn, role string) int {
	defer conn.Close()
	// A terminal's Ctrl-C or timeout(1) signals the whole process group,
	// this child too; the parent decides what a stop means (it kills or
	// signals this child), so a helper must not die half-way through a
	// setup step. Caught rather than ignored: an exec into the command
	// restores the default action, where an ignored signal would stay
	// ignored.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	switch role {
	case RoleDialer:
		return dialerMain(conn)
	case RoleHub:
		return hubMain(conn)
	}
	var req SetupRequest
	if _, err := conn.Recv(&req); err != nil {
		fmt.Fprintln(os.Stderr, "rootlessnet child:", err)
		return 1
	}
	var files []*os.File // the TAP's queues
	var warnings []string
	var err error
	if req.Member {
		warnings, err = setupMember(conn, req)
	} else {
		files, warnings, err = setup(req)
	}
	if err != nil {
		conn.Send(SetupReply{Error: err.Error()})
		return 1
	}
	queues := len(files)
	if req.SockDiag {
		// Made here, it lists this namespace's sockets wherever it goes.
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			closeFiles(files)
			conn.Send(SetupReply{Error: fmt.Sprintf("-p auto: a sock_diag socket in the container's namespace: %v", err)})
			return 1
		}
		files = append(files, os.NewFile(uintptr(fd), "sock_diag"))
	}
	err = conn.Send(SetupReply{Warnings: warnings, Queues: queues}, files...)
	for _, f := range files {
		f.Close()
	}
	if err != nil || role != RoleRun {
		if err != nil {
			return 1
		}
		return 0
	}

	var start StartRequest
	if _, err := conn.Recv(&start); err != nil {
		return 1 // the parent gave up
	}
	if len(req.Command) == 0 {
		conn.Send(ExecReply{Error: "no command given", Status: 127})
		return 127
	}
	path, err := exec.LookPath(req.Command[0])
	if err != nil {
		conn.Send(ExecReply{Error: fmt.Sprintf("cannot execute %s: %v", req.Command[0], errors.Unwrap(err)), Status: 127})
		return 127
	}
	// The control socket is close-on-exec: a successful exec closes it,
	// which is how the parent learns that the command runs.
	err = syscall.Exec(path, req.Command, os.Environ())
	status := 126
	if errors.Is(err, syscall.ENOENT) {
		status = 127
	}
	conn.Send(ExecReply{Error: fmt.Sprintf("cannot execute %s: %v", req.Command[0], err), Status: status})
	return status
}

// setupMember has the parent plug this member's network namespace into
// the network's bridge, then configures the link, host name and
// resolv.conf.
func setupMember(conn *userns.Conn, req SetupRequest) ([]string, error) {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("opening the member's network namespace: %w", err)
	}
	err = conn.Send(MemberNetNS{}, ns)
	ns.Close()
	if err != nil {
		return nil, err
	}
	var attached MemberAttached
	if _, err := conn.Recv(&attached); err != nil {
		return nil, err
	}
	if attached.Error != "" {
		return nil, errors.New(attached.Error)
	}
	if req.Hostname != "" {
		if err := unix.Sethostname([]byte(req.Hostname)); err != nil {
			return nil, fmt.Errorf("setting the host name: %w", err)
		}
	}
	if err := configure(req); err != nil {
		return nil, err
	}
	var warnings []string
	// Frames reach the bridge in the order the member sent them only
	// through the veth's NAPI path, which takes GRO on the receiving end
	// (hub.Attach turns it on) and no TSO on the sending one: super-frames
	// go through the per-CPU backlog of whichever CPU the member's TCP
	// sent them from, and overtake each other. The TCP fast path drops
	// what arrives out of order, so member outbound TCP fell to a tenth
	// of run's with hundreds of retransmits; with TSO off it matches run.
	// At the default MTU (65520) a super-frame held one segment anyway.
	// GRO here keeps the other direction in order too.
	for _, set := range []struct{ cmd, on uint32 }{{unix.ETHTOOL_STSO, 0}, {unix.ETHTOOL_SGSO, 0}, {unix.ETHTOOL_SGRO, 1}} {
		if err := hub.SetEthtoolValue(req.Tap, set.cmd, set.on); err != nil {
			warnings = append(warnings, err.Error())
		}
	}
	if req.ResolvConf != "" {
		if err := bindResolvConf(req.ResolvConf); err != nil {
			warnings = append(warnings, err.Error())
		}
	}
	return warnings, nil
}

func setup(req SetupRequest) ([]*os.File, []string, error) {
	files, fallback, err := tap.OpenQueues(tap.Options{Name: req.Tap, VnetHdr: req.VnetHdr, Queues: req.Queues})
	if err != nil {
		return nil, nil, err
	}
	var warnings []string
	if fallback != nil && !req.QueuesOptional {
		warnings = append(warnings, fallback.Error())
	}
	if req.Configure {
		if err := configure(req); err != nil {
			closeFiles(files)
			return nil, nil, err
		}
	}
	if req.ResolvConf != "" {
		if err := bindResolvConf(req.ResolvConf); err != nil {
			warnings = append(warnings, err.Error())
		}
	}
	return files, warnings, nil
}

// configure sets the link's MTU, MAC, addresses and default routes.
func configure(req SetupRequest) error {
	cfg := tap.Config{Name: req.Tap, MTU: req.MTU}
	var err error
	if req.MAC != "" {
		if cfg.MAC, err = net.ParseMAC(req.MAC); err != nil {
			return fmt.Errorf("invalid MAC %q: %w", req.MAC, err)
		}
	}
	if cfg.Address, err = netip.ParsePrefix(req.Address); err != nil {
		return err
	}
	if cfg.Gateway, err = netip.ParseAddr(req.Gateway); err != nil {
		return err
	}
	if req.Address6 != "" {
		if cfg.Address6, err = netip.ParsePrefix(req.Address6); err != nil {
			return err
		}
		if cfg.Gateway6, err = netip.ParseAddr(req.Gateway6); err != nil {
			return err
		}
	}
	return tap.Configure(cfg)
}

// bindResolvConf puts the container's resolv.conf over /etc/resolv.conf
// in the child's own mount namespace. A symlinked /etc/resolv.conf is
// followed, so its target must exist.
func bindResolvConf(src string) error {
	// Keep the bind mount from propagating back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("resolv.conf not replaced: making / a slave mount: %w", err)
	}
	if err := unix.Mount(src, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("resolv.conf not replaced: bind-mounting over /etc/resolv.conf: %w", err)
	}
	return nil
}
