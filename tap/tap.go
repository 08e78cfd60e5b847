// Package tap opens and configures the TAP device inside the container's
// network namespace.
//
// It opens /dev/net/tun with golang.org/x/sys directly rather than through
// songgao/water: water clears TUNSETPERSIST on every open (which would
// make rootlesskit's persistent tap0 vanish when rootlessnet exits), leaks
// the fd when TUNSETIFF fails, and cannot ask for IFF_VNET_HDR.
package tap

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Options for Open.
type Options struct {
	// Name of the TAP; an existing TAP of that name is attached to.
	Name string
	// VnetHdr asks for virtio-net headers on every frame (IFF_VNET_HDR).
	VnetHdr bool
	// Queues, above 1, asks OpenQueues for a multi-queue TAP
	// (IFF_MULTI_QUEUE) with that many queues, an fd each.
	Queues int
}

// MaxQueues bounds Options.Queues: a queue is a loop and a thread of the
// stack's, and more than the CPUs gain nothing (the kernel allows 256).
const MaxQueues = 16

// OpenQueues opens the TAP with opts.Queues queues (IFF_MULTI_QUEUE): one
// fd per queue of the same device, as Open returns them. The kernel
// spreads the container's flows over the queues, and writes steer them:
// a flow's frames from the container go to the queue that last wrote
// one of its frames (tun_automq_select_queue).
//
// Where a multi-queue TAP cannot be had it falls back, and says why in
// fallback (not an error: the TAP works): to one queue when the device
// exists without IFF_MULTI_QUEUE (such as rootlesskit's persistent tap0)
// or the kernel refuses the flag, and to the queues it got when attaching
// more fails. With Queues at most 1 it is Open.
func OpenQueues(opts Options) (files []*os.File, fallback error, err error) {
	if opts.Queues <= 1 {
		f, err := Open(opts)
		if err != nil {
			return nil, nil, err
		}
		return []*os.File{f}, nil, nil
	}
	if opts.Queues > MaxQueues {
		return nil, nil, fmt.Errorf("%d TAP queues asked for: at most %d", opts.Queues, MaxQueues)
	}
	first, err := open(opts, unix.IFF_MULTI_QUEUE)
	if errors.Is(err, unix.EINVAL) {
		// The device exists without the flag (or the kernel lacks
		// it): one queue, as asked for without it.
		f, err1 := Open(opts)
		if err1 != nil {
			return nil, nil, err1
		}
		return []*os.File{f}, fmt.Errorf("TAP %s: one queue instead of %d: the device refuses IFF_MULTI_QUEUE (it exists without it, or the kernel lacks it): %w", opts.Name, opts.Queues, err), nil
	}
	if err != nil {
		return nil, nil, err
	}
	files = []*os.File{first}
	for len(files) < opts.Queues {
		f, err := open(opts, unix.IFF_MULTI_QUEUE)
		if err != nil {
			return files, fmt.Errorf("TAP %s: %d queues instead of %d: attaching another queue: %w", opts.Name, len(files), opts.Queues, err), nil
		}
		files = append(files, f)
	}
	return files, nil, nil
}

// Open creates (or attaches to) the TAP and returns its fd, non-blocking
// and close-on-exec.
func Open(opts Options) (*os.File, error) { return open(opts, 0) }

// open is Open with more TUNSETIFF flags.
func open(opts Options, more uint16) (*os.File, error) {
	if opts.Name == "" || len(opts.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("invalid TAP name %q: want 1 to %d characters", opts.Name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openError(err)
	}
	ifr, err := unix.NewIfreq(opts.Name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("invalid TAP name %q: %w", opts.Name, err)
	}
	flags := uint16(unix.IFF_TAP|unix.IFF_NO_PI) | more
	if opts.VnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, setIffError(opts.Name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+opts.Name), nil
}

func openError(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		return fmt.Errorf("/dev/net/tun is missing: load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200): %w", err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("/dev/net/tun is not accessible to this user: most distributions ship it mode 0666 (chmod 0666 /dev/net/tun): %w", err)
	}
	return fmt.Errorf("opening /dev/net/tun: %w", err)
}

func setIffError(name string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("TAP %s is in use by another process (choose another name with --tap): %w", name, err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%s exists and is not a TAP device (choose another name with --tap): %w", name, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("not permitted to create or attach TAP %s (it may belong to another user, or the namespace to another user namespace): %w", name, err)
	}
	return fmt.Errorf("creating TAP %s: %w", name, err)
}

// TUN_F_USO4 and TUN_F_USO6 (linux/if_tun.h), which x/sys lacks.
const (
	tunFUSO4 = 0x20
	tunFUSO6 = 0x40
)

// SetOffload tells the kernel that the reader of this TAP (opened with
// VnetHdr) takes TCP super-frames and partial checksums, so the container
// sends 64 KiB segments instead of MTU-sized ones; and, where the kernel
// has it (Linux 6.2), UDP super-frames (USO) both ways, which it reports.
func SetOffload(f *os.File) (uso bool, err error) {
	flags := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	if unix.IoctlSetInt(int(f.Fd()), unix.TUNSETOFFLOAD, flags|tunFUSO4|tunFUSO6) == nil {
		return true, nil
	}
	// An older kernel refuses flags it does not know (EINVAL).
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TUNSETOFFLOAD, flags); err != nil {
		return false, fmt.Errorf("enabling TAP offloads: %w", err)
	}
	return false, nil
}

// SetQueueAttached attaches (true) or detaches (false) f, a queue of a
// multi-queue TAP, from its device (TUNSETQUEUE). A detached queue keeps
// its fd and can be attached again; the device then counts only its
// attached queues, and with one left the kernel no longer hashes each
// frame to pick a queue for it (tun_automq_select_queue, and the flow
// hash of every write). Frames waiting on a queue that is detached are
// dropped. Attaching needs the same rights as opening the TAP.
func SetQueueAttached(f *os.File, attached bool) error {
	return SetQueueAttachedFD(int(f.Fd()), attached)
}

// SetQueueAttachedFD is SetQueueAttached on a raw fd (one the caller
// took out of Go's poller).
func SetQueueAttachedFD(fd int, attached bool) error {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	what := "detaching"
	if attached {
		ifr.SetUint16(unix.IFF_ATTACH_QUEUE)
		what = "attaching"
	} else {
		ifr.SetUint16(unix.IFF_DETACH_QUEUE)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNSETQUEUE, ifr); err != nil {
		return fmt.Errorf("%s a TAP queue: %w", what, err)
	}
	return nil
}
