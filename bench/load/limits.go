package load

import (
	"fmt"
	"syscall"
)

// FileMargin is what a process needs on top of one descriptor per connection: listeners, pipes,
// the runtime's own.
const FileMargin = 64

// CheckOpenFiles fails with a clear message when this process may not open need descriptors. (Go
// raises the soft limit to the hard one at start-up, so the soft limit is what is left to check.)
func CheckOpenFiles(who string, need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	return fmt.Errorf("%s needs %d open files but RLIMIT_NOFILE is %d (hard %d): raise it (ulimit -n) or hold fewer idle connections",
		who, need, lim.Cur, lim.Max)
}
