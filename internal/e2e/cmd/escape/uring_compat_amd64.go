//go:build linux

package main

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// compatURingSetupNr is io_uring_setup's i386 number: a ring set up through int 0x80 is a compat
// ring, whose socket commands take the compat paths.
const compatURingSetupNr = 425

// compatURingSetup sets up a ring through the 32-bit system call, with the parameters copied below
// 4 GiB where it can point at them.
func compatURingSetup(entries uint32, p *uringParams) (int, error) {
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
	if err != nil {
		return -1, err
	}
	defer unix.Munmap(mem)
	low := (*uringParams)(unsafe.Pointer(&mem[0]))
	*low = *p
	r := int32(int80(compatURingSetupNr, uintptr(entries), uintptr(unsafe.Pointer(low)), 0, 0, 0))
	if r < 0 {
		return -1, syscall.Errno(-r)
	}
	*p = *low
	return int(r), nil
}
