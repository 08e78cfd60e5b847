package world

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// ExecutableCopy copies the file at src into a fresh 0755 directory under
// os.TempDir() as a 0755 file, so that an unprivileged uid (Nobody) can
// execute it: Go's build and test directories are 0700. The copy is removed
// by t.Cleanup. It fails the test if os.TempDir() is not searchable by
// others.
func ExecutableCopy(t testing.TB, src string) string {
	t.Helper()
	// Every ancestor must be searchable by "other" for uid 65534 to reach
	// the file.
	for d := filepath.Clean(os.TempDir()); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatalf("world: ExecutableCopy: %v", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("world: ExecutableCopy: %s (mode %v) is not searchable by unprivileged users; set TMPDIR to such a directory", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			break
		}
	}

	dir, err := os.MkdirTemp("", "rootlessnet-exec-")
	if err != nil {
		t.Fatalf("world: ExecutableCopy: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("world: ExecutableCopy cleanup: %v", err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("world: ExecutableCopy: %v", err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	if err := copyExecutable(src, dst); err != nil {
		t.Fatalf("world: ExecutableCopy: %v", err)
	}
	return dst
}

func copyExecutable(src, dst string) (err error) {
	// While dst is open for writing, a fork in another goroutine would let
	// the child inherit the write fd until its exec closes it, and exec of
	// dst would then fail with ETXTBSY (golang/go#22315). Holding ForkLock
	// for reading keeps forks out while the fd exists.
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()

	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	// The umask may have cleared bits.
	return os.Chmod(dst, 0o755)
}
