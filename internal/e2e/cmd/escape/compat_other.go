//go:build linux && !amd64

package main

import "errors"

var errNoCompat = errors.New("ENOSYS")

// compat (int 0x80) syscalls exist on amd64 only.
func compatSetsockopt(int, int, int, []byte) error { return errNoCompat }

func compatSetsockoptInt(int, int, int) func(int) error {
	return func(int) error { return errNoCompat }
}
