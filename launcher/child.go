package launcher

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rootlessnet/rootlessnet/tap"
	"github.com/rootlessnet/rootlessnet/userns"
)

// ChildMain runs the child's role and returns its exit status. It is
// called first thing in main when userns.ChildConn reports a role.
func ChildMain(conn *userns.Conn, role string) int {
	defer conn.Close()
	if role == RoleDialer {
		return dialerMain(conn)
	}
	var req SetupRequest
	if _, err := conn.Recv(&req); err != nil {
		fmt.Fprintln(os.Stderr, "rootlessnet child:", err)
		return 1
	}
	f, warnings, err := setup(req)
	if err != nil {
		conn.Send(SetupReply{Error: err.Error()})
		return 1
	}
	files := []*os.File{f}
	if req.SockDiag {
		// Made here, it lists this namespace's sockets wherever it goes.
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			f.Close()
			conn.Send(SetupReply{Error: fmt.Sprintf("-p auto: a sock_diag socket in the container's namespace: %v", err)})
			return 1
		}
		files = append(files, os.NewFile(uintptr(fd), "sock_diag"))
	}
	err = conn.Send(SetupReply{Warnings: warnings}, files...)
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

func setup(req SetupRequest) (*os.File, []string, error) {
	f, err := tap.Open(tap.Options{Name: req.Tap, VnetHdr: req.VnetHdr})
	if err != nil {
		return nil, nil, err
	}
	if req.Configure {
		cfg := tap.Config{Name: req.Tap, MTU: req.MTU}
		if req.MAC != "" {
			if cfg.MAC, err = net.ParseMAC(req.MAC); err != nil {
				f.Close()
				return nil, nil, fmt.Errorf("invalid MAC %q: %w", req.MAC, err)
			}
		}
		if cfg.Address, err = netip.ParsePrefix(req.Address); err != nil {
			f.Close()
			return nil, nil, err
		}
		if cfg.Gateway, err = netip.ParseAddr(req.Gateway); err != nil {
			f.Close()
			return nil, nil, err
		}
		if req.Address6 != "" {
			if cfg.Address6, err = netip.ParsePrefix(req.Address6); err != nil {
				f.Close()
				return nil, nil, err
			}
			if cfg.Gateway6, err = netip.ParseAddr(req.Gateway6); err != nil {
				f.Close()
				return nil, nil, err
			}
		}
		if err := tap.Configure(cfg); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	var warnings []string
	if req.ResolvConf != "" {
		if err := bindResolvConf(req.ResolvConf); err != nil {
			warnings = append(warnings, err.Error())
		}
	}
	return f, warnings, nil
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
