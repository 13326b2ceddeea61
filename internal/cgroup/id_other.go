//go:build !linux

package cgroup

import "errors"

// ID is the id the kernel reports for a cgroup2 directory; only Linux has one.
func ID(string) (uint64, error) { return 0, errors.New("cgroup ids are Linux only") }
