package runner

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// markInheritedCloexec marks every descriptor from `from` up close-on-exec, so that nothing this
// process inherited or opened crosses the next exec: close_range(2) with CLOSE_RANGE_CLOEXEC
// (Linux 5.11), else each descriptor listed in /proc/self/fd, else every number below the
// descriptor limit. Marking rather than closing leaves this process's own descriptors (the Go
// runtime's, the report pipe) working until the exec.
func markInheritedCloexec(from int) error {
	return markCloexec(from, fdOps{
		closeRange: func(from int) error {
			return unix.CloseRange(uint(from), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
		},
		list:       listFDs,
		setCloexec: func(fd int) error { _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); return err },
		limit: func() int {
			var lim unix.Rlimit
			if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<20 {
				return 1 << 20
			}
			return int(lim.Cur)
		},
	})
}

// fdOps are the system calls markCloexec uses, so that tests can take each fallback.
type fdOps struct {
	closeRange func(from int) error
	list       func() ([]int, error)
	setCloexec func(fd int) error
	limit      func() int
}

func markCloexec(from int, ops fdOps) error {
	err := ops.closeRange(from)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("close_range: %w", err)
	}
	fds, lerr := ops.list()
	if lerr != nil {
		fds = nil
		for fd := from; fd < ops.limit(); fd++ {
			fds = append(fds, fd)
		}
	}
	for _, fd := range fds {
		if fd < from {
			continue
		}
		if err := ops.setCloexec(fd); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("close-on-exec on descriptor %d: %w", fd, err)
		}
	}
	return nil
}

// listFDs returns the open descriptors, from /proc/self/fd.
func listFDs() ([]int, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, n := range names {
		if fd, err := strconv.Atoi(n); err == nil && fd != int(d.Fd()) {
			fds = append(fds, fd)
		}
	}
	return fds, nil
}
