//go:build !linux

package demo

import (
	"context"
	"errors"
	"io"
)

// Run needs Linux: the demo attaches eBPF programs to a cgroup.
func Run(context.Context, io.Writer, Options) error {
	return errors.New("firma demo needs Linux with cgroup v2 and eBPF")
}
