package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLocked means another process holds a pin dir's lock: a sidecar is running with it.
var ErrLocked = errors.New("another firma sidecar holds the lock")

// lockDir is where pin dir locks live: root-only, cleared at boot like the pins themselves.
var lockDir = "/run"

// LockPath is the lock file for a pin dir.
func LockPath(pinDir string) string {
	name := strings.ReplaceAll(strings.Trim(filepath.Clean(pinDir), "/"), "/", "_")
	return filepath.Join(lockDir, "firma-sidecar."+name+".lock")
}

// PinLock is the one-sidecar-per-pin-dir lock. It is held until Close or the process's end.
type PinLock struct {
	f    *os.File
	path string
}

// Lock takes the lock for pinDir without waiting. When another process holds it, the error wraps
// ErrLocked and names that process's pid. Nothing else is written before the lock is held: a second
// sidecar started by mistake touches neither the audit log nor the kernel.
func Lock(pinDir string) (*PinLock, error) {
	path := LockPath(pinDir)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pin dir lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w on %s (pid %s, lock %s)", ErrLocked, pinDir, holder(f), path)
		}
		return nil, fmt.Errorf("pin dir lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &PinLock{f: f, path: path}, nil
}

// holder is the pid written in a lock file, or "unknown".
func holder(f *os.File) string {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	if pid := strings.TrimSpace(string(b[:n])); pid != "" {
		return pid
	}
	return "unknown"
}

// Close releases the lock. The file stays: removing it would let two processes lock two files.
func (l *PinLock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
