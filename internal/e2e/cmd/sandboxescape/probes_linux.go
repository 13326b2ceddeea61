package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

func (r *Report) record(name string, err error) {
	if err == nil {
		r.Probes[name] = Result{OK: true}
		return
	}
	res := Result{Detail: err.Error()}
	var errno unix.Errno
	if errors.As(err, &errno) {
		res.Err = unix.ErrnoName(errno)
	}
	r.Probes[name] = res
}

func errnoOf(e unix.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

// probeFDs lists the descriptors this process inherited and writes to every inet socket among
// them: a socket made outside the enforced cgroup would carry the bytes past the sidecar. An
// inherited descriptor is one without close-on-exec (with it, it would not have crossed the exec);
// the Go runtime's own (it keeps cgroup files open to size GOMAXPROCS) have it.
func probeFDs(r *Report, max int) {
	var wrote []string
	for fd := 3; fd <= max; fd++ {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		desc := strconv.Itoa(fd)
		if dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil {
			desc += " socket " + map[int]string{unix.AF_INET: "inet", unix.AF_INET6: "inet6", unix.AF_UNIX: "unix"}[dom]
			if dom == unix.AF_INET || dom == unix.AF_INET6 {
				if _, err := unix.Write(fd, []byte(fmt.Sprintf("LEAK via inherited fd %d\n", fd))); err == nil {
					wrote = append(wrote, strconv.Itoa(fd))
				}
			}
		} else if target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil {
			desc += " " + target
		}
		r.FDs = append(r.FDs, desc)
	}
	if len(wrote) > 0 {
		r.Probes["inherited-inet-socket"] = Result{OK: true, Detail: "wrote to fds " + strings.Join(wrote, ",")}
	} else {
		r.Probes["inherited-inet-socket"] = Result{Err: "EBADF", Detail: "no inherited inet socket"}
	}
}

func probeAll(r *Report, abstract string, outside int) {
	// ptrace requests must come from one thread.
	runtime.LockOSThread()
	r.PID, r.PPID = os.Getpid(), os.Getppid()
	if b, err := os.ReadFile("/proc/1/comm"); err == nil {
		r.InitComm = strings.TrimSpace(string(b))
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				r.Procs = append(r.Procs, pid)
			}
		}
	}
	if ents, err := os.ReadDir("/dev"); err == nil {
		for _, e := range ents {
			if e.Type()&os.ModeDevice != 0 && e.Type()&os.ModeCharDevice == 0 {
				r.BlockDevices = append(r.BlockDevices, e.Name())
			}
		}
	}
	if ents, err := os.ReadDir("/dev/pts"); err == nil {
		for _, e := range ents {
			r.PTYs = append(r.PTYs, e.Name())
		}
	}

	// Socket families: only unix, inet and inet6 may be created.
	for name, fam := range map[string][2]int{
		"socket-unix":    {unix.AF_UNIX, unix.SOCK_STREAM},
		"socket-inet":    {unix.AF_INET, unix.SOCK_STREAM},
		"socket-inet6":   {unix.AF_INET6, unix.SOCK_DGRAM},
		"socket-netlink": {unix.AF_NETLINK, unix.SOCK_RAW},
		"socket-packet":  {unix.AF_PACKET, unix.SOCK_RAW},
		"socket-vsock":   {unix.AF_VSOCK, unix.SOCK_STREAM},
		"socket-alg":     {unix.AF_ALG, unix.SOCK_SEQPACKET},
		"socket-xdp":     {unix.AF_XDP, unix.SOCK_RAW},
		"socket-key":     {unix.AF_KEY, unix.SOCK_RAW},
		"socket-tipc":    {unix.AF_TIPC, unix.SOCK_RDM},
	} {
		fd, err := unix.Socket(fam[0], fam[1]|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		r.record(name, err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
	}
	r.record("socketpair-unix", err)
	// The kernel has no socketpair for netlink (EOPNOTSUPP); the filter refuses the family first.
	_, err = unix.Socketpair(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	r.record("socketpair-netlink", err)

	probeCompat(r)

	// Another process: a child of our own, then init, then one outside the sandbox.
	null, _ := os.Open(os.DevNull)
	child, err := os.StartProcess("/proc/self/exe", []string{"escape", "-sleep"}, &os.ProcAttr{Files: []*os.File{null, null, null}})
	if err != nil {
		r.record("child", err)
	} else {
		probeChild(r, child.Pid)
		child.Kill()
		child.Wait()
	}
	null.Close()
	r.record("signal-init", unix.Kill(1, 0))
	if strings.HasPrefix(r.InitComm, "firma") { // never trace a host's init
		r.record("ptrace-init", tryPtrace(1))
	}
	if outside > 0 {
		r.record("signal-outside", unix.Kill(outside, 0))
		fd, err := unix.PidfdOpen(outside, 0)
		if err == nil {
			unix.Close(fd)
		}
		r.record("pidfd-open-outside", err)
		r.record("ptrace-outside", tryPtrace(outside))
	}

	// Own memory, through the calls that reach other processes'.
	buf, src := make([]byte, 8), []byte("firma!!!")
	_, err = unix.ProcessVMReadv(os.Getpid(),
		[]unix.Iovec{{Base: &buf[0], Len: 8}}, []unix.RemoteIovec{{Base: uintptr(unsafe.Pointer(&src[0])), Len: 8}}, 0)
	r.record("process_vm_readv", err)
	_, err = unix.ProcessVMWritev(os.Getpid(),
		[]unix.Iovec{{Base: &src[0], Len: 8}}, []unix.RemoteIovec{{Base: uintptr(unsafe.Pointer(&buf[0])), Len: 8}}, 0)
	r.record("process_vm_writev", err)
	_, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(os.Getpid()), 0 /* KCMP_FILE */, 0, 0, 0)
	r.record("kcmp", errnoOf(e))
	if pidfd, err := unix.PidfdOpen(os.Getpid(), 0); err == nil {
		iov := []unix.Iovec{{Base: &buf[0], Len: 8}}
		_, _, e := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&iov[0])), 0, unix.MADV_COLD, 0, 0)
		r.record("process_madvise", errnoOf(e))
		unix.Close(pidfd)
	}

	// The kernel's own interfaces.
	mapAttr := [5]uint32{2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1, 0}
	fd, _, e := unix.Syscall(unix.SYS_BPF, 0 /* BPF_MAP_CREATE */, uintptr(unsafe.Pointer(&mapAttr[0])), unsafe.Sizeof(mapAttr))
	if e == 0 {
		unix.Close(int(fd))
	}
	r.record("bpf", errnoOf(e))
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{})), Bits: unix.PerfBitDisabled | unix.PerfBitExcludeKernel | unix.PerfBitExcludeHv}
	pfd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err == nil {
		unix.Close(pfd)
	}
	r.record("perf_event_open", err)
	var params [120]byte // struct io_uring_params
	fd, _, e = unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
	if e == 0 {
		unix.Close(int(fd))
	}
	r.record("io_uring_setup", errnoOf(e))
	fd, _, e = unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|1 /* UFFD_USER_MODE_ONLY */, 0, 0)
	if e == 0 {
		unix.Close(int(fd))
	}
	r.record("userfaultfd", errnoOf(e))
	_, err = unix.AddKey("user", "firma-escape-test", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
	r.record("add_key", err)
	_, err = unix.KeyctlGetKeyringID(unix.KEY_SPEC_PROCESS_KEYRING, true)
	r.record("keyctl", err)
	_, err = unix.Klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, nil)
	r.record("syslog", err)
	name, _ := unix.BytePtrFromString("firma_no_such_module")
	_, _, e = unix.Syscall(unix.SYS_DELETE_MODULE, uintptr(unsafe.Pointer(name)), unix.O_NONBLOCK, 0)
	r.record("delete_module", errnoOf(e))
	if nsfd, err := unix.Open("/proc/self/ns/uts", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		r.record("setns", unix.Setns(nsfd, unix.CLONE_NEWUTS))
		unix.Close(nsfd)
	}
	_, err = unix.OpenByHandleAt(unix.AT_FDCWD, unix.NewFileHandle(1, make([]byte, 8)), unix.O_RDONLY)
	r.record("open_by_handle_at", err)

	// Calls that change the host if they work: tried only inside firma run (under firma's init).
	if strings.HasPrefix(r.InitComm, "firma") {
		_, _, e = unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0)
		r.record("kexec_load", errnoOf(e))
		_, _, e = unix.Syscall(unix.SYS_INIT_MODULE, 0, 0, uintptr(unsafe.Pointer(name)))
		r.record("init_module", errnoOf(e))
		_, _, e = unix.Syscall(unix.SYS_FINIT_MODULE, ^uintptr(0), uintptr(unsafe.Pointer(name)), 0)
		r.record("finit_module", errnoOf(e))
		_, err = unix.RequestKey("user", "firma-escape-test", "", unix.KEY_SPEC_PROCESS_KEYRING)
		r.record("request_key", err)
		r.record("acct", unix.Acct(""))
		nowhere, _ := unix.BytePtrFromString("/firma-no-such-swap")
		_, _, e = unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(nowhere)), 0, 0)
		r.record("swapoff", errnoOf(e))
		probeArchOnly(r)
	}

	// Abstract unix sockets live in the network namespace, which the agent shares with the host.
	if abstract != "" {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrUnix{Name: "@" + abstract})
			if err == nil {
				unix.Write(fd, []byte("LEAK via abstract unix socket\n"))
			}
			unix.Close(fd)
		}
		r.record("abstract-unix-connect", err)
	}

	// Block devices, if any are visible: reading one reads every file on it, hidden or not.
	for _, d := range r.BlockDevices {
		f, err := os.Open(filepath.Join("/dev", d))
		if err == nil {
			f.Close()
		}
		r.record("open-block-device", err)
		break
	}
}

// tryPtrace attaches to pid and, when that works, waits for the attach stop and detaches again,
// leaving the process as it was.
func tryPtrace(pid int) error {
	if err := unix.PtraceAttach(pid); err != nil {
		return err
	}
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, unix.WALL, nil)
	return unix.PtraceDetach(pid)
}

// probeChild tries the calls that reach into another process on a child of our own, which the
// kernel allows without privilege.
func probeChild(r *Report, pid int) {
	r.record("ptrace-child", tryPtrace(pid))
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		r.record("pidfd-getfd-child", fmt.Errorf("pidfd_open: %w", err))
		return
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, 0, 0)
	if err == nil {
		unix.Close(fd)
	}
	r.record("pidfd-getfd-child", err)
}
