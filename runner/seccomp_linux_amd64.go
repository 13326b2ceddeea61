package runner

import "golang.org/x/sys/unix"

// x86_64: calls made with the x32 ABI carry this arch's token, so the filter refuses them by number.
const (
	archName  = "amd64"
	archAudit = unix.AUDIT_ARCH_X86_64
	archX32   = true
)

// archOnlyNumbers are refused calls only x86_64 has: port I/O.
var archOnlyNumbers = map[string]uint32{"iopl": unix.SYS_IOPL, "ioperm": unix.SYS_IOPERM}
