//go:build linux && (amd64 || arm64)

package runner

import "golang.org/x/sys/unix"

// nativeSeccompArch is this architecture's numbering of the calls the filter names. x/sys/unix
// compiles its SYS_* constants per GOARCH, so this one table gives amd64's numbers on amd64 and
// arm64's on arm64; seccomp_linux_<arch>.go add the audit arch and what only that arch has.
func nativeSeccompArch() (seccompArch, error) {
	numbers := map[string]uint32{
		"io_uring_setup":    unix.SYS_IO_URING_SETUP,
		"io_uring_enter":    unix.SYS_IO_URING_ENTER,
		"io_uring_register": unix.SYS_IO_URING_REGISTER,
		"ptrace":            unix.SYS_PTRACE,
		"process_vm_readv":  unix.SYS_PROCESS_VM_READV,
		"process_vm_writev": unix.SYS_PROCESS_VM_WRITEV,
		"pidfd_getfd":       unix.SYS_PIDFD_GETFD,
		"process_madvise":   unix.SYS_PROCESS_MADVISE,
		"kcmp":              unix.SYS_KCMP,
		"bpf":               unix.SYS_BPF,
		"perf_event_open":   unix.SYS_PERF_EVENT_OPEN,
		"kexec_load":        unix.SYS_KEXEC_LOAD,
		"kexec_file_load":   unix.SYS_KEXEC_FILE_LOAD,
		"init_module":       unix.SYS_INIT_MODULE,
		"finit_module":      unix.SYS_FINIT_MODULE,
		"delete_module":     unix.SYS_DELETE_MODULE,
		"reboot":            unix.SYS_REBOOT,
		"swapon":            unix.SYS_SWAPON,
		"swapoff":           unix.SYS_SWAPOFF,
		"acct":              unix.SYS_ACCT,
		"syslog":            unix.SYS_SYSLOG,
		"keyctl":            unix.SYS_KEYCTL,
		"add_key":           unix.SYS_ADD_KEY,
		"request_key":       unix.SYS_REQUEST_KEY,
		"userfaultfd":       unix.SYS_USERFAULTFD,
		"setns":             unix.SYS_SETNS,
		"open_by_handle_at": unix.SYS_OPEN_BY_HANDLE_AT,
	}
	for name, nr := range archOnlyNumbers {
		numbers[name] = nr
	}
	return seccompArch{
		Name:       archName,
		Audit:      archAudit,
		X32:        archX32,
		Socket:     unix.SYS_SOCKET,
		Socketpair: unix.SYS_SOCKETPAIR,
		Numbers:    numbers,
	}, nil
}
