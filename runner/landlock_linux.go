package runner

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// landlockABI returns the kernel's Landlock ABI version, 0 when Landlock is off or absent.
func landlockABI() int {
	v, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		return 0
	}
	return int(v)
}

// landlockScope puts this thread (and what it execs) in a Landlock domain that handles no file or
// network access and scopes the two IPCs the PID and mount namespaces do not cover: connecting or
// sending to an abstract unix socket created outside the domain, and signalling a process outside
// it. Needs no_new_privs. Two raw calls rather than go-landlock: that library restricts every
// thread of the process (with libpsx, which wraps pthread_create for the whole firma binary when
// cgo is on), where the exec step needs only the thread that execs.
func landlockScope() error {
	attr := unix.LandlockRulesetAttr{Scoped: unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | unix.LANDLOCK_SCOPE_SIGNAL}
	fd, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr), 0)
	if errno != 0 {
		return errno
	}
	defer unix.Close(int(fd))
	if _, _, errno := unix.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, fd, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
