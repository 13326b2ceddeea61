package cgroup

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ID is the id the kernel reports for a cgroup2 directory (bpf_get_current_cgroup_id, the kernfs
// file handle): its inode number.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not on a cgroup2 filesystem", path)
	}
	return st.Ino, nil
}
