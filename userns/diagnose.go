package userns

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Diagnose turns a failure to create a user namespace into an error that
// names the setting responsible and how to change it.
func Diagnose(err error) error {
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.ENOSPC) &&
		!errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EINVAL) &&
		!errors.Is(err, syscall.EUSERS) {
		return err
	}
	if v, ok := readSysctl("kernel/unprivileged_userns_clone"); ok && v == "0" {
		return fmt.Errorf("cannot create a user namespace: unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); enable them with: sysctl -w kernel.unprivileged_userns_clone=1: %w", err)
	}
	if v, ok := readSysctl("user/max_user_namespaces"); ok && v == "0" {
		return fmt.Errorf("cannot create a user namespace: user.max_user_namespaces=0; raise it with: sysctl -w user.max_user_namespaces=15000: %w", err)
	}
	if v, ok := readSysctl("kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" {
		return fmt.Errorf("cannot create a user namespace: AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1); allow rootlessnet with an AppArmor profile granting 'userns', or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0: %w", err)
	}
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("cannot create a user namespace: the limit user.max_user_namespaces is reached: %w", err)
	}
	if errors.Is(err, syscall.EUSERS) {
		return fmt.Errorf("cannot create a user namespace: nested too deep (the kernel allows 32 levels): %w", err)
	}
	if seccompFiltered() {
		return fmt.Errorf("cannot create a user namespace: this process runs under a seccomp filter that may forbid it (a container runtime's default profile does; run with a profile that allows clone(CLONE_NEWUSER) and unshare): %w", err)
	}
	return fmt.Errorf("cannot create a user namespace: %w", err)
}

// MayAllowSetgroups reports whether a user namespace created by this
// process may keep setgroups(2) allowed: the kernel requires CAP_SETGID in
// the current user namespace, and refuses "allow" under a namespace whose
// setgroups is "deny" (the state unshare -r, bubblewrap and flatpak leave).
func MayAllowSetgroups() bool {
	if b, err := os.ReadFile("/proc/self/setgroups"); err == nil && strings.TrimSpace(string(b)) == "deny" {
		return false
	}
	caps, ok := statusField("CapEff")
	if !ok {
		return os.Getuid() == 0
	}
	v, err := strconv.ParseUint(caps, 16, 64)
	if err != nil {
		return false
	}
	const capSetgid = 6
	return v&(1<<capSetgid) != 0
}

// seccompFiltered reports whether a seccomp filter confines this process.
func seccompFiltered() bool {
	v, ok := statusField("Seccomp")
	return ok && v == "2"
}

// statusField returns a field of /proc/self/status.
func statusField(name string) (string, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func readSysctl(name string) (string, bool) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}
