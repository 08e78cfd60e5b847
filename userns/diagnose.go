package userns

import (
	"errors"
	"fmt"
	"os"
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
		!errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EINVAL) {
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
	return fmt.Errorf("cannot create a user namespace (is the process confined by seccomp, or already nested too deep?): %w", err)
}

func readSysctl(name string) (string, bool) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}
