package main

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// pasta2025Script is pasta-2025.sh: it builds passt 2025-05-03 (Debian
// 13's) from Debian's source into /usr/local/bin, unless it is there.
//
//go:embed pasta-2025.sh
var pasta2025Script []byte

// installPasta2025 runs pasta-2025.sh (as root; it needs gcc, make and
// Debian's mirror), its output on stderr, for at most 20 minutes.
func installPasta2025() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (it installs into /usr/local/bin)")
	}
	f, err := os.CreateTemp("", "pasta-2025-*.sh")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(pasta2025Script); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	c := exec.Command("bash", f.Name())
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	c.WaitDelay = 5 * time.Second
	// Its own process group, so that a timeout ends make's children too.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("pasta-2025.sh: %w", err)
		}
	case <-time.After(20 * time.Minute):
		syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("pasta-2025.sh did not finish within 20 minutes")
	}
	if _, err := os.Stat(pasta2025Bin); err != nil {
		return err
	}
	return nil
}
