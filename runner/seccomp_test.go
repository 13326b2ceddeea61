//go:build linux

package runner

import (
	"encoding/binary"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData lays out struct seccomp_data the way the filter reads it. x/net/bpf's VM loads words
// big-endian, so each 32-bit field is written big-endian at the offset the kernel would give it
// on a little-endian machine (the low word of an argument first).
func seccompData(arch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[20+8*i:], uint32(a>>32))
	}
	return b
}

func runFilter(t *testing.T, vm *bpf.VM, in []byte) uint32 {
	t.Helper()
	v, err := vm.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(v)
}

func filterVM(t *testing.T, a seccompArch) *bpf.VM {
	return filterVMNotify(t, a, false)
}

func filterVMNotify(t *testing.T, a seccompArch, notify bool) *bpf.VM {
	t.Helper()
	ins, err := seccompFilter(a, notify)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := assembleSeccomp(ins); err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestSeccompFilterNative(t *testing.T) {
	a, err := nativeSeccompArch()
	if err != nil {
		t.Fatal(err)
	}
	vm := filterVM(t, a)
	for name, nr := range a.Numbers {
		if got := runFilter(t, vm, seccompData(a.Audit, nr)); got != retEPERM {
			t.Errorf("%s (%d): %#x, want EPERM", name, nr, got)
		}
	}
	for _, name := range refusedSyscalls {
		if _, ok := a.Numbers[name]; !ok && !archLacks(a.Name, name) {
			t.Errorf("%s is not in the %s table", name, a.Name)
		}
	}
	// What every program needs passes.
	for name, nr := range map[string]uint32{"read": unix.SYS_READ, "write": unix.SYS_WRITE, "execve": unix.SYS_EXECVE,
		"clone": unix.SYS_CLONE, "clone3": unix.SYS_CLONE3, "unshare": unix.SYS_UNSHARE, "mount": unix.SYS_MOUNT,
		"connect": unix.SYS_CONNECT, "exit_group": unix.SYS_EXIT_GROUP, "pidfd_open": unix.SYS_PIDFD_OPEN,
		"landlock_restrict_self": unix.SYS_LANDLOCK_RESTRICT_SELF} {
		if got := runFilter(t, vm, seccompData(a.Audit, nr)); got != retAllow {
			t.Errorf("%s: %#x, want allow", name, got)
		}
	}
	// socket and socketpair: only unix, inet and inet6, whatever the upper half of the register
	// holds (the kernel reads an int).
	for _, call := range []uint32{a.Socket, a.Socketpair} {
		for fam, want := range map[uint64]uint32{
			unix.AF_UNIX: retAllow, unix.AF_INET: retAllow, unix.AF_INET6: retAllow,
			unix.AF_INET | 1<<32: retAllow,
			unix.AF_NETLINK:      retEAFNOSUPORT, unix.AF_PACKET: retEAFNOSUPORT, unix.AF_VSOCK: retEAFNOSUPORT,
			unix.AF_XDP: retEAFNOSUPORT, unix.AF_ALG: retEAFNOSUPORT, unix.AF_UNSPEC: retEAFNOSUPORT,
			unix.AF_PACKET | 1<<32: retEAFNOSUPORT, 1 << 16: retEAFNOSUPORT,
		} {
			if got := runFilter(t, vm, seccompData(a.Audit, call, fam, unix.SOCK_STREAM, 0)); got != want {
				t.Errorf("call %d family %#x: %#x, want %#x", call, fam, got, want)
			}
		}
	}
	// Another architecture's entry (int 0x80, AArch32): ENOSYS for everything, exit included.
	for _, arch := range []uint32{unix.AUDIT_ARCH_I386, unix.AUDIT_ARCH_ARM, unix.AUDIT_ARCH_X86_64 ^ unix.AUDIT_ARCH_AARCH64 ^ a.Audit} {
		for _, nr := range []uint32{0, 1, 20, 26, 359, unix.SYS_EXIT_GROUP} {
			if got := runFilter(t, vm, seccompData(arch, nr, unix.AF_NETLINK)); got != retENOSYS {
				t.Errorf("arch %#x nr %d: %#x, want ENOSYS", arch, nr, got)
			}
		}
	}
	if a.X32 {
		for _, nr := range []uint32{unix.SYS_PTRACE, unix.SYS_GETPID, unix.SYS_SOCKET} {
			if got := runFilter(t, vm, seccompData(a.Audit, nr|x32SyscallBit, unix.AF_NETLINK)); got != retENOSYS {
				t.Errorf("x32 %d: %#x, want ENOSYS", nr, got)
			}
		}
	}
}

// TestSeccompFilterOtherArch builds the filter for a made-up table laid out like arm64's (no x32,
// no iopl): the arch check and numbering come from the table, not from the machine the test
// runs on.
func TestSeccompFilterOtherArch(t *testing.T) {
	a := seccompArch{Name: "arm64", Audit: unix.AUDIT_ARCH_AARCH64, Socket: 198, Socketpair: 199, Numbers: map[string]uint32{}}
	for i, name := range refusedSyscalls {
		if !archLacks("arm64", name) {
			a.Numbers[name] = 1000 + uint32(i)
		}
	}
	vm := filterVM(t, a)
	if got := runFilter(t, vm, seccompData(unix.AUDIT_ARCH_AARCH64, 1000)); got != retEPERM {
		t.Errorf("refused call: %#x", got)
	}
	if got := runFilter(t, vm, seccompData(unix.AUDIT_ARCH_AARCH64, 198, unix.AF_PACKET)); got != retEAFNOSUPORT {
		t.Errorf("AF_PACKET: %#x", got)
	}
	if got := runFilter(t, vm, seccompData(unix.AUDIT_ARCH_AARCH64, 1000|x32SyscallBit)); got != retAllow {
		t.Errorf("no x32 check on arm64, and no such call: %#x", got)
	}
	if got := runFilter(t, vm, seccompData(unix.AUDIT_ARCH_X86_64, 1000)); got != retENOSYS {
		t.Errorf("x86_64 call on an arm64 filter: %#x", got)
	}
	// A table that lacks a refused call is an error, not a filter with a hole.
	delete(a.Numbers, "ptrace")
	if _, err := seccompFilter(a, false); err == nil {
		t.Error("a table without ptrace made a filter")
	}
}

// TestSeccompFilterNotify: with a listener, every refusal is handed to the supervisor (which
// answers with the errno of the filter without one: seccompAnswer), and nothing else changes.
func TestSeccompFilterNotify(t *testing.T) {
	a, err := nativeSeccompArch()
	if err != nil {
		t.Fatal(err)
	}
	plain, notify := filterVM(t, a), filterVMNotify(t, a, true)
	var inputs [][]byte
	for _, nr := range a.Numbers {
		inputs = append(inputs, seccompData(a.Audit, nr))
	}
	for _, call := range []uint32{a.Socket, a.Socketpair} {
		for _, fam := range []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_PACKET, unix.AF_VSOCK, unix.AF_PACKET | 1<<32} {
			inputs = append(inputs, seccompData(a.Audit, call, fam, unix.SOCK_RAW, 0))
		}
		inputs = append(inputs, seccompData(a.Audit, call, unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER))
	}
	// NETLINK_ROUTE, which glibc's getaddrinfo tries: refused by the filter itself, unrecorded.
	route := seccompData(a.Audit, a.Socket, unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if p, n := runFilter(t, plain, route), runFilter(t, notify, route); p != retEAFNOSUPORT || n != retEAFNOSUPORT {
		t.Errorf("NETLINK_ROUTE: %#x without a listener, %#x with one; want EAFNOSUPPORT from the filter", p, n)
	}
	inputs = append(inputs, seccompData(a.Audit, unix.SYS_READ), seccompData(a.Audit, unix.SYS_EXECVE),
		seccompData(unix.AUDIT_ARCH_I386, 1), seccompData(unix.AUDIT_ARCH_I386, 359, unix.AF_PACKET))
	if a.X32 {
		inputs = append(inputs, seccompData(a.Audit, unix.SYS_PTRACE|x32SyscallBit))
	}
	for _, in := range inputs {
		p, n := runFilter(t, plain, in), runFilter(t, notify, in)
		switch p {
		case retEPERM, retEAFNOSUPORT:
			if n != retNotify {
				t.Errorf("%x: %#x without a listener, %#x with one; want it handed over", in[:8], p, n)
			}
		default:
			if n != p {
				t.Errorf("%x: %#x without a listener, %#x with one; want the same", in[:8], p, n)
			}
		}
	}
}

// TestSeccompAnswer: the supervisor answers what the filter alone would have, and says what to
// record.
func TestSeccompAnswer(t *testing.T) {
	a, err := nativeSeccompArch()
	if err != nil {
		t.Fatal(err)
	}
	for name, nr := range a.Numbers {
		errno, ref := seccompAnswer(a, a.Audit, nr, [6]uint64{})
		if errno != unix.EPERM || ref == nil || ref.Syscall != name {
			t.Errorf("%s: %v %+v, want EPERM naming it", name, errno, ref)
		}
	}
	errno, ref := seccompAnswer(a, a.Audit, a.Socket, [6]uint64{unix.AF_PACKET | 1<<32, unix.SOCK_RAW | unix.SOCK_CLOEXEC, 0x300})
	if errno != unix.EAFNOSUPPORT || ref == nil || ref.Syscall != "socket" || ref.Family != unix.AF_PACKET ||
		ref.Type != unix.SOCK_RAW|unix.SOCK_CLOEXEC || ref.Protocol != 0x300 {
		t.Errorf("socket AF_PACKET: %v %+v", errno, ref)
	}
	if errno, ref := seccompAnswer(a, a.Audit, a.Socketpair, [6]uint64{unix.AF_NETLINK}); errno != unix.EAFNOSUPPORT || ref == nil || ref.Syscall != "socketpair" || ref.Family != unix.AF_NETLINK {
		t.Errorf("socketpair AF_NETLINK: %v %+v", errno, ref)
	}
	if errno, ref := seccompAnswer(a, unix.AUDIT_ARCH_I386, 1, [6]uint64{}); errno != unix.ENOSYS || ref != nil {
		t.Errorf("another architecture: %v %+v, want ENOSYS, nothing to record", errno, ref)
	}
}
