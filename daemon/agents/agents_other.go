//go:build !linux

package agents

import (
	"errors"
	"fmt"
)

// cgroupDirByID needs Linux's kernfs file handles.
func cgroupDirByID(_ int, id uint64) (string, error) {
	return "", fmt.Errorf("%w: cgroup id %d: %w", ErrUnknownAgent, id, errors.ErrUnsupported)
}
