//go:build !linux

package runner

import "github.com/rs/zerolog"

// InitArg, ExecArg and HoldArg name firma run's hidden modes; see sys_linux.go.
const (
	InitArg = "__init"
	ExecArg = "__exec"
	HoldArg = "__hold"
)

func realHost(zerolog.Logger) (*host, error) { return nil, ErrUnsupported }

// Init is only meaningful on Linux.
func Init() int { return 1 }

// ExecAgent is only meaningful on Linux.
func ExecAgent() error { return ErrUnsupported }

// Hold is only meaningful on Linux.
func Hold() error { return ErrUnsupported }
