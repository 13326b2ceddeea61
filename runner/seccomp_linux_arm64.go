package runner

import "golang.org/x/sys/unix"

const (
	archName  = "arm64"
	archAudit = unix.AUDIT_ARCH_AARCH64
	archX32   = false
)

// archOnlyNumbers: arm64 has no refused call of its own.
var archOnlyNumbers = map[string]uint32{}
