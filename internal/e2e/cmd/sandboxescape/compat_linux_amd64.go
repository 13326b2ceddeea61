package main

import "golang.org/x/sys/unix"

// int80 makes a system call through the 32-bit compat entry (i386 numbering).
func int80(trap, a1, a2, a3 uintptr) uintptr

// probeCompat: the i386 entry has its own numbers, which a filter that checks only the x86_64
// table would let through.
func probeCompat(r *Report) {
	r.record("int80-getpid", compatResult(int80(20, 0, 0, 0)))
	ret := int80(359, unix.AF_NETLINK, unix.SOCK_RAW, 0) // socket(2) in the i386 table
	if int32(ret) >= 0 {
		unix.Close(int(int32(ret)))
	}
	r.record("int80-socket-netlink", compatResult(ret))
}

func compatResult(ret uintptr) error {
	if v := int32(ret); v < 0 && v > -4096 {
		return unix.Errno(-v)
	}
	return nil
}

// probeArchOnly tries the port I/O calls x86_64 has.
func probeArchOnly(r *Report) {
	r.record("iopl", unix.Iopl(0))
	r.record("ioperm", unix.Ioperm(0, 0, 0))
}
