package hub

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EnableGRO turns generic receive offload on for link name in the current
// network namespace. On a veth this also moves its receive path to NAPI:
// frames then cross to the peer in order on one queue, instead of through
// the per-CPU backlog of whichever CPU the sender ran on, which reorders a
// TCP stream whenever the sender migrates and costs it retransmits.
func EnableGRO(name string) error {
	return SetEthtoolValue(name, unix.ETHTOOL_SGRO, 1)
}

// SetEthtoolValue sets one of the ethtool settings of link name that take
// a single value (ETHTOOL_SGRO, ETHTOOL_STXCSUM, ...) in the current
// network namespace.
func SetEthtoolValue(name string, cmd, data uint32) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// On the heap, which does not move, since ifr holds its address as
	// an integer (struct ifreq's ifr_data).
	value := &struct{ cmd, data uint32 }{cmd: cmd, data: data}
	ifr := &struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte // the rest of struct ifreq's union
	}{data: uintptr(unsafe.Pointer(value))}
	copy(ifr.name[:], name)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
	runtime.KeepAlive(value)
	if errno != 0 {
		return fmt.Errorf("ethtool command %#x on %s: %w", cmd, name, errno)
	}
	return nil
}
