// Package userprocs finds what a rootless launcher (podman, dockerd-
// rootless.sh) left running for a test or a bench, so that it can be
// killed: such launchers start daemons that outlive the command that
// started them.
package userprocs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Of returns the processes of uid that belong to one run of a launcher:
// those whose environment names runDir as XDG_RUNTIME_DIR (the launcher's
// daemons, rootlessnet), and every other process of uid in one of their
// user namespaces other than the initial one (the containers). Processes
// of uid in the initial user namespace are not the run's unless marked:
// another run may share the user.
func Of(uid uint32, runDir string) []int {
	marker := []byte("XDG_RUNTIME_DIR=" + runDir + "\x00")
	userns := map[string]bool{}
	var ours, others []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		fi, err := os.Stat(filepath.Join("/proc", ent.Name()))
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != uid {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "environ"))
		if bytes.Contains(env, marker) {
			ours = append(ours, pid)
			if ns, err := os.Readlink(filepath.Join("/proc", ent.Name(), "ns", "user")); err == nil {
				userns[ns] = true
			}
		} else {
			others = append(others, pid)
		}
	}
	if initNS, err := os.Readlink("/proc/self/ns/user"); err == nil {
		delete(userns, initNS)
	}
	for _, pid := range others {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid)); err == nil && userns[ns] {
			ours = append(ours, pid)
		}
	}
	return ours
}
