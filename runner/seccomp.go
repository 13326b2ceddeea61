//go:build linux

package runner

import (
	"fmt"
	"sort"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/daemon/control"
)

// The agent's seccomp filter. It is a deny list — an agent is an arbitrary program, and an allow
// list would break the next one — of the calls that reach past the sandbox or that the sandbox
// cannot otherwise account for. Every refusal returns an errno, never kills, so that programs can
// fall back. It is checked against the architecture the call was made in: a 64-bit process can
// still enter the kernel through the 32-bit compat entry (int 0x80 on x86_64, AArch32 on arm64)
// with a different numbering, and x86_64 has the x32 ABI on the same arch token; all of those get
// ENOSYS.
//
// Every refusal below is also recorded: the filter hands the call to firma run
// (SECCOMP_RET_USER_NOTIF), which reports it to the sidecar — while the process waits, so that
// the sidecar reads who it is from /proc — and then answers with the errno (notify_linux.go). The
// kernel allows one notification listener per process tree: where one exists already (firma run
// inside another such supervisor) or the kernel has none, the filter answers by itself,
// unrecorded, and firma run says so. (The common libraries fall short here: elastic/go-seccomp-bpf sends calls from another
// architecture to the policy's default action, which for a deny list is "allow";
// libseccomp-golang needs cgo. The filter is a few dozen instructions, assembled with x/net/bpf.)
//
// Refused with EAFNOSUPPORT:
//
//   - socket and socketpair with any family but AF_UNIX, AF_INET and AF_INET6. The cgroup hooks
//     see only inet sockets; a packet socket, AF_VSOCK (to the hypervisor), AF_XDP, AF_NETLINK
//     (and with it most of the kernel's network configuration code, the classic target of
//     exploits from a user namespace), AF_ALG and the rest go around them. AF_NETLINK with
//     NETLINK_ROUTE is refused without a record: glibc's getaddrinfo tries it on most lookups.
//
// Refused with EPERM:
//
//   - io_uring_setup, io_uring_enter, io_uring_register: io_uring creates sockets and connects
//     without a system call the filter could see;
//   - ptrace, process_vm_readv, process_vm_writev, pidfd_getfd, process_madvise, kcmp: reaching
//     into another process (its memory, its descriptors) — the sidecar's, or another agent's;
//   - bpf, perf_event_open: loading or reading BPF programs and maps, firma's included;
//   - kexec_load, kexec_file_load, init_module, finit_module, delete_module, reboot, swapon,
//     swapoff, acct, syslog, iopl, ioperm: the kernel itself;
//   - keyctl, add_key, request_key: kernel keyrings are not namespaced, so an agent run with
//     --user as the invoking user would share that user's keys (Kerberos tickets, fscrypt keys);
//   - userfaultfd: a primitive of kernel exploits, of no use to an agent;
//   - setns: joining namespaces the sandbox does not own;
//   - open_by_handle_at: opening files by handle, around whatever covers their path.
//
// Allowed on purpose: unshare and clone with namespace flags, and mount, umount2, pivot_root,
// move_mount, open_tree, fsopen, fsmount and fsconfig. Coding agents sandbox their own tools with
// bubblewrap, which needs an unprivileged user namespace and mounts inside it. That gives the agent
// nothing over firma: the agent has no capability in the host's user namespace, so it cannot
// touch the host's mounts, namespaces or network configuration; mounts it inherits into a user
// namespace of its own are locked (it cannot unmount what hides firma's files, nor make a
// read-only mount writable); a network namespace of its own has only a loopback device, and the
// cgroup hooks follow the agent into it; a cgroup namespace cannot reach cgroups outside its root.

// refusedSyscalls are the calls refused with EPERM on every architecture (some exist only on
// x86_64: the arch tables leave out what they lack).
var refusedSyscalls = []string{
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise", "kcmp",
	"bpf", "perf_event_open",
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"reboot", "swapon", "swapoff", "acct", "syslog", "iopl", "ioperm",
	"keyctl", "add_key", "request_key",
	"userfaultfd",
	"setns",
	"open_by_handle_at",
}

// allowedFamilies are the socket families an agent may create.
var allowedFamilies = []uint32{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6}

// seccompArch is one architecture's numbering of the calls the filter names.
type seccompArch struct {
	Name       string
	Audit      uint32 // AUDIT_ARCH_* as seccomp_data.arch carries it
	X32        bool   // refuse syscall numbers with __X32_SYSCALL_BIT (x86_64)
	Socket     uint32
	Socketpair uint32
	Numbers    map[string]uint32 // refusedSyscalls this architecture has
}

const (
	x32SyscallBit = 0x40000000

	// Offsets into struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
	dataNR   = 0
	dataArch = 4
	dataArg0 = 16 // low 32 bits on little-endian machines: socket(2)'s family is an int
	dataArg2 = 32 // socket(2)'s protocol, likewise

	netlinkRoute = 0 // NETLINK_ROUTE
)

// seccompRet are the filter's verdicts.
const (
	retAllow       = unix.SECCOMP_RET_ALLOW
	retEPERM       = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retENOSYS      = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	retEAFNOSUPORT = unix.SECCOMP_RET_ERRNO | uint32(unix.EAFNOSUPPORT)
	retNotify      = unix.SECCOMP_RET_USER_NOTIF
)

// seccompFilter assembles the filter for a. The program is laid out as
//
//	arch check → [x32 check] → socket, socketpair → refused calls → allow
//	family check → allow | EAFNOSUPPORT
//	EPERM, ENOSYS
//
// with forward jumps only, as classic BPF requires. With notify, EAFNOSUPPORT and EPERM are
// handed to the supervisor instead (seccompAnswer gives the same errnos).
func seccompFilter(a seccompArch, notify bool) ([]bpf.Instruction, error) {
	refuseFamily, refuseCall := uint32(retEAFNOSUPORT), uint32(retEPERM)
	if notify {
		refuseFamily, refuseCall = retNotify, retNotify
	}
	for _, name := range refusedSyscalls {
		if _, ok := a.Numbers[name]; !ok && !archLacks(a.Name, name) {
			return nil, fmt.Errorf("seccomp: no %s number for %s", a.Name, name)
		}
	}
	var nums []uint32
	for _, n := range a.Numbers {
		nums = append(nums, n)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })

	var p program
	p.add(bpf.LoadAbsolute{Off: dataArch, Size: 4})
	p.jumpUnless(bpf.JumpEqual, a.Audit, "enosys")
	p.add(bpf.LoadAbsolute{Off: dataNR, Size: 4})
	if a.X32 {
		p.jumpIf(bpf.JumpGreaterOrEqual, x32SyscallBit, "enosys")
	}
	p.jumpIf(bpf.JumpEqual, a.Socket, "family")
	p.jumpIf(bpf.JumpEqual, a.Socketpair, "family")
	for _, n := range nums {
		p.jumpIf(bpf.JumpEqual, n, "eperm")
	}
	p.label("allow")
	p.add(bpf.RetConstant{Val: retAllow})
	p.label("family")
	p.add(bpf.LoadAbsolute{Off: dataArg0, Size: 4})
	for _, f := range allowedFamilies {
		p.jumpIf(bpf.JumpEqual, f, "allow-family")
	}
	p.jumpIf(bpf.JumpEqual, unix.AF_NETLINK, "netlink")
	p.add(bpf.RetConstant{Val: refuseFamily})
	// glibc's getaddrinfo opens a NETLINK_ROUTE socket on most lookups (to sort the answers, and
	// for AI_ADDRCONFIG): refused here without a word, or every name an agent resolves would cost
	// a round trip to the sidecar and leave a record.
	p.label("netlink")
	p.add(bpf.LoadAbsolute{Off: dataArg2, Size: 4})
	p.jumpIf(bpf.JumpEqual, netlinkRoute, "netlink-route")
	p.add(bpf.RetConstant{Val: refuseFamily})
	p.label("netlink-route")
	p.add(bpf.RetConstant{Val: retEAFNOSUPORT})
	p.label("allow-family")
	p.add(bpf.RetConstant{Val: retAllow})
	p.label("eperm")
	p.add(bpf.RetConstant{Val: refuseCall})
	p.label("enosys")
	p.add(bpf.RetConstant{Val: retENOSYS})
	return p.resolve()
}

// archLacks are refused calls an architecture does not have.
func archLacks(arch, name string) bool {
	return arch == "arm64" && (name == "iopl" || name == "ioperm")
}

// program is a classic BPF program with forward jumps to named labels.
type program struct {
	ins    []bpf.Instruction
	jumps  map[int]jumpTo // instruction index → where it goes
	labels map[string]int
}

type jumpTo struct {
	cond   bpf.JumpTest
	val    uint32
	target string
	negate bool // jump to target when the test fails; fall through when it holds
}

func (p *program) add(i bpf.Instruction) { p.ins = append(p.ins, i) }

func (p *program) label(name string) {
	if p.labels == nil {
		p.labels = map[string]int{}
	}
	p.labels[name] = len(p.ins)
}

func (p *program) jumpIf(cond bpf.JumpTest, val uint32, target string) {
	p.jump(jumpTo{cond: cond, val: val, target: target})
}

func (p *program) jumpUnless(cond bpf.JumpTest, val uint32, target string) {
	p.jump(jumpTo{cond: cond, val: val, target: target, negate: true})
}

func (p *program) jump(j jumpTo) {
	if p.jumps == nil {
		p.jumps = map[int]jumpTo{}
	}
	p.jumps[len(p.ins)] = j
	p.add(nil) // placeholder, filled in by resolve
}

func (p *program) resolve() ([]bpf.Instruction, error) {
	out := append([]bpf.Instruction(nil), p.ins...)
	for at, j := range p.jumps {
		to, ok := p.labels[j.target]
		if !ok {
			return nil, fmt.Errorf("seccomp: no label %q", j.target)
		}
		skip := to - at - 1
		if skip < 0 || skip > 255 {
			return nil, fmt.Errorf("seccomp: jump from %d to %s (%d) out of range", at, j.target, to)
		}
		ji := bpf.JumpIf{Cond: j.cond, Val: j.val, SkipTrue: uint8(skip)}
		if j.negate {
			ji = bpf.JumpIf{Cond: j.cond, Val: j.val, SkipFalse: uint8(skip)}
		}
		out[at] = ji
	}
	return out, nil
}

// assembleSeccomp turns the filter into what the kernel takes.
func assembleSeccomp(ins []bpf.Instruction) ([]unix.SockFilter, error) {
	raw, err := bpf.Assemble(ins)
	if err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// seccompAnswer is the supervisor's answer to a call the filter handed it: the errno the filter
// would have returned by itself, and what to record. A call from another architecture than a's
// (the filter never hands one over) gets ENOSYS and no record.
func seccompAnswer(a seccompArch, arch, nr uint32, args [6]uint64) (unix.Errno, *control.Refusal) {
	if arch != a.Audit {
		return unix.ENOSYS, nil
	}
	switch nr {
	case a.Socket, a.Socketpair:
		name := "socket"
		if nr == a.Socketpair {
			name = "socketpair"
		}
		// The kernel reads int arguments: the low 32 bits, sign included.
		return unix.EAFNOSUPPORT, &control.Refusal{Syscall: name,
			Family: int(int32(args[0])), Type: int(int32(args[1])), Protocol: int(int32(args[2]))}
	}
	for name, n := range a.Numbers {
		if n == nr {
			return unix.EPERM, &control.Refusal{Syscall: name}
		}
	}
	return unix.EPERM, &control.Refusal{Syscall: fmt.Sprintf("syscall_%d", nr)}
}
