//go:build linux

package main

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The i386 number of setsockopt, reached through int 0x80 from this 64-bit process: the kernel
// then takes the compat path, where cgroup/setsockopt programs do not run.
const compatSetsockoptNr = 366

// int80 makes an i386 system call; arguments are truncated to 32 bits.
func int80(trap, a1, a2, a3, a4, a5 uintptr) uintptr

// compatSetsockopt copies value below 4 GiB, where a 32-bit call can point at it, and calls the
// compat setsockopt.
func compatSetsockopt(fd, level, opt int, value []byte) error {
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	copy(mem, value)
	r := int32(int80(compatSetsockoptNr, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&mem[0])), uintptr(len(value))))
	if r < 0 {
		return syscall.Errno(-r)
	}
	return nil
}

func compatSetsockoptInt(level, opt, v int) func(int) error {
	return func(fd int) error {
		b := []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
		return compatSetsockopt(fd, level, opt, b)
	}
}
