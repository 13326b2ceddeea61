//go:build linux

// Command nonetlink runs a program with socket(AF_NETLINK, …) failing with EPERM, as firma's BPF
// LSM program makes it fail inside an enforced cgroup: tests use it to check that clients still
// resolve names and connect without netlink (glibc's getaddrinfo asks netlink for the host's
// addresses when AI_ADDRCONFIG is set) on kernels where the LSM program cannot be loaded.
//
//	nonetlink PROGRAM [ARG…]
package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nonetlink PROGRAM [ARG…]")
		os.Exit(2)
	}
	path, err := exec.LookPath(os.Args[1])
	if err != nil {
		fail(err)
	}
	runtime.LockOSThread()
	if err := denyNetlink(); err != nil {
		fail(err)
	}
	fail(syscall.Exec(path, os.Args[1:], os.Environ()))
}

// denyNetlink installs a seccomp filter: socket() with domain AF_NETLINK returns EPERM, every other
// call (and every other architecture's) is allowed.
func denyNetlink() error {
	const (
		offNr   = 0  // offsetof(struct seccomp_data, nr)
		offArch = 4  // arch
		offArg0 = 16 // args[0], low 32 bits on little-endian
	)
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offArch},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 5, K: auditArch},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offNr},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: unix.SYS_SOCKET},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offArg0},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.AF_NETLINK},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "nonetlink:", err)
	os.Exit(2)
}
