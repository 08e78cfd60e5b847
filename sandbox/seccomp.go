//go:build linux

package sandbox

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// allowed are the system calls of the running stack. They were found by
// running the end-to-end traffic (TCP, UDP, DNS, ICMP, published ports, the
// API, run and attach forms, root and unprivileged) under strace -f and
// keeping the calls made after the sandbox was entered; then come those the
// Go runtime and glibc make on rarer paths (returning memory, thread exit,
// signals, time without the vDSO) and harmless variants of calls seen.
// Left out on purpose: open/openat (nothing is opened once confined; glibc
// falls back when its CPU count read fails), ioctl but SIOCINQ and TUNSETQUEUE, dup, mount, namespace
// and credential calls, ptrace, bpf, execve. Everything else fails with
// EPERM: a call missed here makes one operation fail and be logged, not
// every container lose its network, as SECCOMP_RET_KILL would.
var allowed = []string{
	// Go runtime and glibc threads: memory, scheduling, signals, time.
	"brk", "mmap", "munmap", "mprotect", "madvise", "mremap",
	"futex", "sched_yield", "sched_getaffinity", "nanosleep", "clock_nanosleep",
	"clock_gettime", "gettimeofday", "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid",
	"tgkill", "tkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
	"set_robust_list", "rseq", "exit", "exit_group", "restart_syscall",
	"getrlimit", "prlimit64", "getrandom",
	// Polling and descriptors.
	"epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "poll", "ppoll",
	"close", "fcntl", "read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "fstat",
	// Sockets: host side of the NAT, published ports, ping, the API socket.
	"socket", "connect", "bind", "listen", "accept", "accept4", "shutdown",
	"getsockname", "getpeername", "setsockopt", "getsockopt",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
	// run: signal and reap the command.
	"kill", "pidfd_send_signal", "wait4", "waitid",
	// Dir: watch the namespace path, remove the API socket at exit.
	"newfstatat", "unlinkat",
	// --port-bypass: io.Copy between two TCP sockets splices through a
	// pipe. Go falls back to read/write only when pipe2 fails; a refused
	// splice would fail the copy instead.
	"pipe2", "splice",
}

// cloneNamespaces are the clone flags that would make namespaces: threads
// never need them.
const cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUSER | unix.CLONE_NEWNET | unix.CLONE_NEWPID |
	unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// actionENOSYS answers clone3, whose flags live in memory that seccomp
// cannot read: glibc then creates threads with clone, whose flags it can.
const actionENOSYS = seccomp.ActionErrno | seccomp.Action(unix.ENOSYS)

// Policy returns the allow-list policy.
func Policy() seccomp.Policy {
	return seccomp.Policy{
		DefaultAction: seccomp.ActionErrno, // EPERM
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: allowed},
			{Action: seccomp.ActionAllow, NamesWithCondtions: []seccomp.NameWithConditions{{
				Name:       "clone",
				Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsNotSet, Value: cloneNamespaces}},
			}, {
				// relay.Stream asks a host socket how much it holds,
				// to size the netstack's buffers.
				Name:       "ioctl",
				Conditions: seccomp.ArgumentConditions{{Argument: 1, Operation: seccomp.Equal, Value: unix.SIOCINQ}},
			}, {
				// --queues auto attaches and detaches the TAP's
				// queues (tap.SetQueueAttached).
				Name:       "ioctl",
				Conditions: seccomp.ArgumentConditions{{Argument: 1, Operation: seccomp.Equal, Value: unix.TUNSETQUEUE}},
			}}},
			{Action: actionENOSYS, Names: []string{"clone3"}},
		},
	}
}

// ApplySeccomp loads the allow-list on every thread (TSYNC) with
// no_new_privs set. Call it last: nothing may be set up afterwards.
func ApplySeccomp() error {
	if !seccomp.Supported() {
		return fmt.Errorf("seccomp: not supported by this kernel")
	}
	err := seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy:     Policy(),
	})
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}

// AllowedCount is the size of the allow-list (clone and ioctl with
// conditions included), for the record.
func AllowedCount() int { return len(allowed) + 2 }
