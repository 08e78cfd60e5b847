//go:build linux

// Package sandbox confines the running network stack, as slirp4netns'
// --enable-sandbox and --enable-seccomp do: an empty, read-only root in a
// mount namespace of its own, every capability dropped but
// CAP_NET_BIND_SERVICE, and a system call allow-list (seccomp.go).
//
// # Design
//
// Three Linux rules shape it:
//
//   - unshare(CLONE_NEWNS) fails with EINVAL in a process whose threads
//     share their file system context (CLONE_FS, which every Go thread
//     does), and unshare(CLONE_NEWUSER) needs a single-threaded caller.
//     So the namespaces are made by a C constructor before the Go runtime
//     starts a thread, in a copy of rootlessnet that Reexec executes in
//     place: same pid (podman and rootlesskit signal the pid they
//     started), same argv, inherited fds. An unprivileged process gets a
//     new user namespace with its uid and gid mapped 1:1, for the
//     CAP_SYS_ADMIN that a mount namespace needs; host sockets keep their
//     owner and ping_group_range sees the same gid, as both use the
//     kernel ids. A process that already holds CAP_SYS_ADMIN (root, or
//     podman's own user namespace) gets only a mount namespace, and so
//     keeps CAP_NET_BIND_SERVICE where the host's ports live. Unlike
//     slirp4netns, which joins the container's user namespace, the stack
//     never shares a user namespace with the container, whose root could
//     then ptrace it.
//
//   - Capabilities belong to each thread, and capset(2) and
//     PR_CAPBSET_DROP change only the caller's, so a Go program must run
//     them on every thread at once. With cgo linked (userns/nsenter and
//     this package need it) syscall.AllThreadsSyscall refuses, so Enter
//     uses libcap's psx, which finds the threads in /proc/PID/task.
//
//   - psx needs /proc, which the empty root lacks, and pivot_root(2) and
//     umount(2) need CAP_SYS_ADMIN, which is dropped. So the constructor
//     also forks a helper that keeps its capabilities and waits. Once the
//     process has set itself up (TAP open, API socket and published ports
//     listening, resolv.conf read), Enter drops the capabilities of every
//     thread and then asks the helper to pivot_root: that moves the root
//     of every process in the mount namespace whose root was the old one,
//     this one included. The helper detaches the old root and exits.
//
// Nothing from the host file system is bound into the new root: the stack
// reads resolv.conf once at start and opens no file afterwards. The only
// ways left to the host's files are descriptors the caller kept on
// purpose (Dir, for the API socket's removal at exit and the namespace
// path's polling).
package sandbox

/*
#cgo CFLAGS: -Wall
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

// Steps, reported with errno when one fails.
enum {
	SB_OK, SB_UNSHARE, SB_SETGROUPS, SB_UIDMAP, SB_GIDMAP, SB_PROPAGATION,
	SB_PIPE, SB_FORK, SB_MOUNT_TMPFS, SB_CHDIR, SB_PIVOT, SB_UMOUNT,
	SB_REMOUNT, SB_HELPER_GONE,
};

static int sb_requested;
static int sb_step, sb_errno;
static pid_t sb_helper = -1;
static int sb_req = -1, sb_resp = -1;

int rootlessnet_sandbox_requested(void) { return sb_requested; }
int rootlessnet_sandbox_step(void) { return sb_step; }
int rootlessnet_sandbox_errno(void) { return sb_errno; }
int rootlessnet_sandbox_helper(void) { return sb_helper; }
int rootlessnet_sandbox_req(void) { return sb_req; }
int rootlessnet_sandbox_resp(void) { return sb_resp; }

static int sb_fail(int step) {
	sb_step = step;
	sb_errno = errno;
	return -1;
}

static int sb_write_file(const char *path, const char *s) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, s, strlen(s));
	int saved = errno;
	close(fd);
	errno = saved;
	return n == (ssize_t)strlen(s) ? 0 : -1;
}

// sb_pivot makes an empty read-only tmpfs the root of the mount namespace,
// and so of the parent, whose root is the old one. As in runc,
// pivot_root(".", ".") stacks the old root on the new one, whence
// umount2(".") detaches it, with no directory to create in the new root.
static int sb_pivot(void) {
	if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,nr_inodes=8,mode=0555") != 0)
		return sb_fail(SB_MOUNT_TMPFS);
	if (chdir("/tmp") != 0)
		return sb_fail(SB_CHDIR);
	if (syscall(SYS_pivot_root, ".", ".") != 0)
		return sb_fail(SB_PIVOT);
	if (umount2(".", MNT_DETACH) != 0)
		return sb_fail(SB_UMOUNT);
	if (chdir("/") != 0)
		return sb_fail(SB_CHDIR);
	if (mount("", "/", "", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		return sb_fail(SB_REMOUNT);
	return 0;
}

// sb_helper_main waits for one request, pivots and answers: {step, errno}.
// The end of the request pipe (the parent exited) ends it too.
static void sb_helper_main(int req, int resp) {
	char c;
	int res[2];
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	// A terminal's Ctrl-C or timeout(1) signals the whole process group:
	// the parent decides what a stop means, and its exit ends this helper
	// (the request pipe's end, or the death signal above).
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	// Hold nothing of the parent's: its TAP, ready and exit fds.
	for (int fd = 3; fd < 1024; fd++)
		if (fd != req && fd != resp)
			close(fd);
	ssize_t n;
	do
		n = read(req, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(0);
	sb_step = SB_OK;
	sb_errno = 0;
	sb_pivot();
	res[0] = sb_step;
	res[1] = sb_errno;
	if (write(resp, res, sizeof res) != sizeof res)
		_exit(1);
	_exit(0);
}

__attribute__((constructor)) static void rootlessnet_sandbox_init(void) {
	const char *spec = getenv("_ROOTLESSNET_SANDBOX");
	int req[2], resp[2];

	if (spec == NULL || *spec == '\0')
		return;
	sb_requested = 1;
	int newuser = strcmp(spec, "user") == 0;
	uid_t uid = geteuid();
	gid_t gid = getegid();
	if (unshare(CLONE_NEWNS | (newuser ? CLONE_NEWUSER : 0)) != 0) {
		sb_fail(SB_UNSHARE);
		return;
	}
	if (newuser) {
		char buf[64];
		// An unprivileged writer of gid_map must deny setgroups first.
		if (sb_write_file("/proc/self/setgroups", "deny") != 0) {
			sb_fail(SB_SETGROUPS);
			return;
		}
		snprintf(buf, sizeof buf, "%u %u 1\n", uid, uid);
		if (sb_write_file("/proc/self/uid_map", buf) != 0) {
			sb_fail(SB_UIDMAP);
			return;
		}
		snprintf(buf, sizeof buf, "%u %u 1\n", gid, gid);
		if (sb_write_file("/proc/self/gid_map", buf) != 0) {
			sb_fail(SB_GIDMAP);
			return;
		}
	}
	// Nothing done here may reach the host: receive its mount events,
	// send none.
	if (mount("", "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) {
		sb_fail(SB_PROPAGATION);
		return;
	}
	if (pipe2(req, O_CLOEXEC) != 0 || pipe2(resp, O_CLOEXEC) != 0) {
		sb_fail(SB_PIPE);
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		sb_fail(SB_FORK);
		return;
	}
	if (pid == 0)
		sb_helper_main(req[0], resp[1]);
	close(req[0]);
	close(resp[1]);
	sb_helper = pid;
	sb_req = req[1];
	sb_resp = resp[0];
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/psx"
)

// Env asks the constructor for the namespaces: "user" for new user and
// mount namespaces, "mount" for a mount namespace only.
const Env = "_ROOTLESSNET_SANDBOX"

var stepNames = map[C.int]string{
	C.SB_UNSHARE:     "creating the namespaces (unshare)",
	C.SB_SETGROUPS:   "denying setgroups in the new user namespace",
	C.SB_UIDMAP:      "writing uid_map",
	C.SB_GIDMAP:      "writing gid_map",
	C.SB_PROPAGATION: "making mounts slaves of the host's",
	C.SB_PIPE:        "creating the helper's pipes",
	C.SB_FORK:        "starting the mount helper",
	C.SB_MOUNT_TMPFS: "mounting the new root (tmpfs on /tmp)",
	C.SB_CHDIR:       "entering the new root",
	C.SB_PIVOT:       "pivot_root",
	C.SB_UMOUNT:      "detaching the old root",
	C.SB_REMOUNT:     "making the new root read-only",
	C.SB_HELPER_GONE: "the mount helper is gone",
}

func stepError(step, errno C.int) error {
	return fmt.Errorf("sandbox: %s: %w", stepNames[step], syscall.Errno(errno))
}

// Reexec replaces the process with a new copy of itself (same pid, argv and
// inherited fds) that starts in the sandbox's namespaces; env is added to
// the environment, to carry state. It returns only on error. Descriptors
// the copy needs must not be close-on-exec.
func Reexec(env ...string) error {
	kind := "user"
	if hasSysAdmin() {
		kind = "mount"
	}
	full := append(os.Environ(), Env+"="+kind)
	full = append(full, env...)
	err := syscall.Exec("/proc/self/exe", os.Args, full)
	return fmt.Errorf("sandbox: re-executing rootlessnet: %w", err)
}

// Started reports whether this process was started by Reexec, and why its
// namespaces could not be made, if they could not. It removes Env from the
// environment so that children do not inherit it.
func Started() (bool, error) {
	os.Unsetenv(Env)
	if C.rootlessnet_sandbox_requested() == 0 {
		return false, nil
	}
	if step := C.rootlessnet_sandbox_step(); step != C.SB_OK {
		err := stepError(step, C.rootlessnet_sandbox_errno())
		if step == C.SB_UNSHARE {
			err = explainUnshare(err)
		}
		return true, err
	}
	return true, nil
}

// errRefused marks a Started error where the kernel refused the
// namespaces: the process is unchanged and may go on unconfined.
var errRefused = errors.New("refused")

// Refused reports whether err, from Started, means that the kernel refused
// to create the namespaces, leaving the process as it was. Any other
// failure leaves it half-way (say, in a user namespace without a mapping).
func Refused(err error) bool { return errors.Is(err, errRefused) }

// explainUnshare names the likely cause of a refused unshare.
func explainUnshare(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("%w: the kernel %w new user or mount namespaces here (kernel.unprivileged_userns_clone, user.max_user_namespaces, AppArmor's apparmor_restrict_unprivileged_userns, or a seccomp policy around rootlessnet); run without --enable-sandbox or allow them", err, errRefused)
	}
	return err
}

// hasSysAdmin reports whether the calling thread holds CAP_SYS_ADMIN in
// its user namespace (root, or root of podman's user namespace).
func hasSysAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_ADMIN/32].Effective&(1<<(unix.CAP_SYS_ADMIN%32)) != 0
}

// Enter confines the process once it is set up: no_new_privs and every
// capability but CAP_NET_BIND_SERVICE dropped on every thread, then an
// empty read-only root. Only a process that Started may Enter, once.
func Enter() error {
	if C.rootlessnet_sandbox_requested() == 0 || C.rootlessnet_sandbox_step() != C.SB_OK {
		return errors.New("sandbox: the namespaces were not created at start")
	}
	req := os.NewFile(uintptr(C.rootlessnet_sandbox_req()), "sandbox-req")
	resp := os.NewFile(uintptr(C.rootlessnet_sandbox_resp()), "sandbox-resp")
	defer req.Close()
	defer resp.Close()
	if err := dropCapabilities(); err != nil {
		return err
	}
	if _, err := req.Write([]byte{1}); err != nil {
		return stepError(C.SB_HELPER_GONE, C.int(syscall.EPIPE))
	}
	var res [2]int32
	_, err := readFull(resp, unsafe.Slice((*byte)(unsafe.Pointer(&res[0])), unsafe.Sizeof(res)))
	// The helper exits once it answered, or died: reap it either way.
	var ws unix.WaitStatus
	unix.Wait4(int(C.rootlessnet_sandbox_helper()), &ws, 0, nil)
	if err != nil {
		return stepError(C.SB_HELPER_GONE, C.int(syscall.EPIPE))
	}
	if res[0] != C.SB_OK {
		return stepError(C.int(res[0]), C.int(res[1]))
	}
	// pivot_root moved our root; a working directory other than / stays
	// in the old tree until we leave it.
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("sandbox: chdir /: %w", err)
	}
	return nil
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// dropCapabilities leaves CAP_NET_BIND_SERVICE alone in the bounding,
// permitted, effective and inheritable sets of every thread, clears the
// ambient set and sets no_new_privs, as slirp4netns' sandbox does.
func dropCapabilities() error {
	if _, _, e := psx.Syscall6(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); e != 0 {
		return fmt.Errorf("sandbox: no_new_privs: %w", e)
	}
	for c := uintptr(0); ; c++ {
		if c == unix.CAP_NET_BIND_SERVICE {
			continue
		}
		if _, _, e := psx.Syscall6(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0, 0, 0, 0); e != 0 {
			if e == unix.EINVAL { // past the kernel's last capability
				break
			}
			return fmt.Errorf("sandbox: dropping capability %d from the bounding set: %w", c, e)
		}
	}
	if _, _, e := psx.Syscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); e != 0 && e != unix.EINVAL {
		return fmt.Errorf("sandbox: clearing ambient capabilities: %w", e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	var keep uint32
	if hasCap(unix.CAP_NET_BIND_SERVICE) {
		keep = 1 << unix.CAP_NET_BIND_SERVICE
	}
	data[0] = unix.CapUserData{Effective: keep, Permitted: keep, Inheritable: keep}
	if _, _, e := psx.Syscall3(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("sandbox: capset: %w", e)
	}
	return nil
}

// hasCap reports whether the calling thread has c in its permitted set
// (capset may not add one it lacks).
func hasCap(c uint) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Permitted&(1<<(c%32)) != 0
}

// Dir is an O_PATH descriptor of a directory, opened before Enter, through
// which a file in it can still be looked at and removed from the empty
// root.
type Dir struct {
	fd   int
	name string
}

// OpenDir opens the directory holding path; name is path's last element.
func OpenDir(path string) (*Dir, error) {
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err})
	}
	return &Dir{fd: fd, name: filepath.Base(path)}, nil
}

// FileID identifies a file.
type FileID struct{ Dev, Ino uint64 }

// Lstat returns the identity of the file itself (a final symlink is not
// followed: following /proc/PID/ns/net needs ptrace rights over PID,
// which a process in a user namespace of its own lacks), and whether it is
// a symlink.
func (d *Dir) Lstat() (id FileID, symlink bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, d.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return FileID{}, false, err
	}
	return FileID{Dev: st.Dev, Ino: st.Ino}, st.Mode&unix.S_IFMT == unix.S_IFLNK, nil
}

// RemoveIf removes the file if it is still id (not a newer one of the same
// name).
func (d *Dir) RemoveIf(id FileID) error {
	if cur, _, err := d.Lstat(); err != nil || cur != id {
		return err
	}
	return unix.Unlinkat(d.fd, d.name, 0)
}

// Close closes the descriptor.
func (d *Dir) Close() error { return unix.Close(d.fd) }
