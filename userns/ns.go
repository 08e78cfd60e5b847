// Package userns creates and joins user, network and mount namespaces for
// rootlessnet, and carries typed messages and file descriptors between a
// parent in the host namespaces and a child inside the container's.
package userns

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenNetNS opens path and checks that it is a network namespace.
func OpenNetNS(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		return nil, fmt.Errorf("%s is not a network namespace (want a path such as /proc/PID/ns/net)", path)
	}
	return f, nil
}

// OpenUserNS opens path and checks that it is a user namespace.
func OpenUserNS(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("user namespace %s: %w", path, err)
	}
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWUSER {
		f.Close()
		return nil, fmt.Errorf("%s is not a user namespace", path)
	}
	return f, nil
}

// OwningUserNS returns the user namespace that owns the namespace ns
// (NS_GET_USERNS).
func OwningUserNS(ns *os.File) (*os.File, error) {
	fd, err := unix.IoctlRetInt(int(ns.Fd()), unix.NS_GET_USERNS)
	if err != nil {
		return nil, fmt.Errorf("finding the user namespace that owns %s: %w", ns.Name(), err)
	}
	return os.NewFile(uintptr(fd), "userns"), nil
}

// SameNS reports whether the two namespace files name the same namespace.
func SameNS(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// IsCurrentUserNS reports whether ns is the caller's own user namespace,
// which setns(2) refuses to join again.
func IsCurrentUserNS(ns *os.File) bool {
	self, err := os.Open("/proc/self/ns/user")
	if err != nil {
		return false
	}
	defer self.Close()
	return SameNS(self, ns)
}

// NSID identifies a namespace file by device and inode.
type NSID struct{ Dev, Ino uint64 }

// StatNS returns the identity of the namespace at path.
func StatNS(path string) (NSID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NSID{}, err
	}
	return NSID{Dev: st.Dev, Ino: st.Ino}, nil
}

// ErrGone is returned when a namespace path no longer names the namespace
// it named at start.
var ErrGone = errors.New("namespace is gone")
