package agents

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// cgroupDirByID opens a cgroup through a kernfs file handle (the cgroup id is the handle) relative
// to the open cgroup2 mount and reads its absolute path back.
func cgroupDirByID(mountFD int, id uint64) (string, error) {
	var handle [8]byte
	binary.NativeEndian.PutUint64(handle[:], id)
	const fileidKernfs = 0xfe
	fd, err := unix.OpenByHandleAt(mountFD, unix.NewFileHandle(fileidKernfs, handle[:]), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("%w: cgroup id %d: %v", ErrUnknownAgent, id, err)
	}
	defer unix.Close(fd)
	abs, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("cgroup id %d: %w", id, err)
	}
	return abs, nil
}
