//go:build !unix

package log

import (
	"os"
	"path/filepath"
)

// lockDir creates the lock file; without flock the one-process rule is the
// operator's to keep.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
}

func unlockDir(f *os.File) {
	if f != nil {
		f.Close()
	}
}
