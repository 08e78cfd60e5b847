//go:build linux

package sandbox

import (
	"slices"
	"testing"
)

func TestPolicyAssembles(t *testing.T) {
	p := Policy()
	if _, err := p.Assemble(); err != nil {
		t.Fatalf("the policy does not assemble (an unknown syscall name?): %v", err)
	}
}

// TestPolicyLeavesOut guards the calls the confined stack must never make:
// they would undo the sandbox or reach the file system.
func TestPolicyLeavesOut(t *testing.T) {
	for _, name := range []string{
		"open", "openat", "openat2", "execve", "execveat", "mount", "umount2", "pivot_root", "chroot",
		"unshare", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "capset",
		"setuid", "setgid", "setresuid", "setresgid", "ioctl", "prctl", "seccomp", "keyctl",
		"open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "move_mount", "open_tree",
		"init_module", "finit_module", "kexec_load", "userfaultfd", "perf_event_open",
	} {
		if slices.Contains(allowed, name) {
			t.Errorf("%s is allowed", name)
		}
	}
	if n := AllowedCount(); n > 80 {
		t.Errorf("%d calls allowed; the list should stay short", n)
	}
	t.Logf("%d system calls allowed", AllowedCount())
}
