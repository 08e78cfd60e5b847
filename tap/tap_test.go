package tap

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNewNetNS runs fn on a thread of its own in a new network namespace
// (root only). The thread is never unlocked: it ends with fn, and the
// namespace with it.
func inNewNetNS(t *testing.T, fn func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace and TAPs")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- errSkip{err}
			return
		}
		errc <- fn()
	}()
	err := <-errc
	var skip errSkip
	if errors.As(err, &skip) {
		t.Skipf("unshare(CLONE_NEWNET): %v", skip.error)
	}
	if err != nil {
		t.Fatal(err)
	}
}

type errSkip struct{ error }

// tapFlags is what TUNGETIFF says of f's device: its name and flags.
func tapFlags(f *os.File) (string, uint16, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNGETIFF, ifr); err != nil {
		return "", 0, err
	}
	return ifr.Name(), ifr.Uint16(), nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// queuesAttached checks that TAP name has want queues attached.
func queuesAttached(name string, want int) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if tt, ok := l.(*netlink.Tuntap); !ok || tt.Queues != want {
		return fmt.Errorf("%s: %+v queues attached, want %d", name, l.Attrs(), want)
	}
	return nil
}

// TestOpenQueues: a multi-queue TAP has an fd per queue, all on one
// device with IFF_MULTI_QUEUE and the offloads set on each; one queue is
// Open's TAP; and a TAP that exists without IFF_MULTI_QUEUE gives one
// queue and says why.
func TestOpenQueues(t *testing.T) {
	inNewNetNS(t, func() error {
		files, fallback, err := OpenQueues(Options{Name: "mq0", VnetHdr: true, Queues: 3})
		if err != nil || fallback != nil {
			return errors.Join(errors.New("3 queues"), err, fallback)
		}
		defer closeAll(files)
		if len(files) != 3 {
			return fmt.Errorf("3 queues asked for, %d fds", len(files))
		}
		for _, f := range files {
			name, flags, err := tapFlags(f)
			if err != nil {
				return err
			}
			if name != "mq0" || flags&unix.IFF_MULTI_QUEUE == 0 || flags&unix.IFF_VNET_HDR == 0 {
				return fmt.Errorf("a queue's fd is on %s with flags %#x: want IFF_MULTI_QUEUE and IFF_VNET_HDR", name, flags)
			}
			if _, err := SetOffload(f); err != nil {
				return err
			}
		}
		l, err := netlink.LinkByName("mq0")
		if err != nil {
			return err
		}
		if tt, ok := l.(*netlink.Tuntap); !ok || tt.Queues != 3 || tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 {
			return errors.New("mq0 is not a TAP with 3 queues attached")
		}
		// Detach the last two, and attach one again: the device counts
		// the attached ones.
		for _, f := range files[1:] {
			if err := SetQueueAttached(f, false); err != nil {
				return err
			}
		}
		if err := queuesAttached("mq0", 1); err != nil {
			return err
		}
		if err := SetQueueAttached(files[1], false); err == nil {
			return errors.New("detaching a detached queue was not refused")
		}
		if err := SetQueueAttached(files[2], true); err != nil {
			return err
		}
		if err := queuesAttached("mq0", 2); err != nil {
			return err
		}

		// One queue: as Open, no multi-queue flag.
		one, fallback, err := OpenQueues(Options{Name: "sq1", Queues: 1})
		if err != nil || fallback != nil || len(one) != 1 {
			return errors.Join(errors.New("1 queue"), err, fallback)
		}
		defer closeAll(one)
		if _, flags, err := tapFlags(one[0]); err != nil || flags&unix.IFF_MULTI_QUEUE != 0 {
			return errors.Join(errors.New("one queue has IFF_MULTI_QUEUE"), err)
		}

		// A persistent TAP made without the flag (rootlesskit's tap0).
		p, err := Open(Options{Name: "rk0"})
		if err != nil {
			return err
		}
		if err := unix.IoctlSetInt(int(p.Fd()), unix.TUNSETPERSIST, 1); err != nil {
			p.Close()
			return err
		}
		p.Close()
		got, fallback, err := OpenQueues(Options{Name: "rk0", VnetHdr: true, Queues: 2})
		if err != nil {
			return err
		}
		defer closeAll(got)
		if len(got) != 1 || fallback == nil || !strings.Contains(fallback.Error(), "one queue instead of 2") {
			return errors.Join(errors.New("a single-queue TAP: want one fd and a fallback"), fallback)
		}
		unix.IoctlSetInt(int(got[0].Fd()), unix.TUNSETPERSIST, 0)

		if _, _, err := OpenQueues(Options{Name: "mq1", Queues: MaxQueues + 1}); err == nil {
			return errors.New("more than MaxQueues queues were not refused")
		}
		return nil
	})
}
