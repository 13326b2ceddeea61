//go:build linux

package doctor

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/proc"
)

// minKernel is the oldest kernel with every hook firma attaches (getpeername, 5.8) and cgroup
// bpf_links (5.7).
var minKernel = [2]int{5, 8}

// attachTypes are the cgroup hooks firma's programs attach to (bpf/redirect.c), by program type.
// TODO(lead): take them from the bpf package once it exports its program list.
var attachTypes = []struct {
	name string
	prog ebpf.ProgramType
	at   ebpf.AttachType
}{
	{"connect4", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect},
	{"connect6", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect},
	{"sendmsg4", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Sendmsg},
	{"sendmsg6", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Sendmsg},
	{"recvmsg4", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Recvmsg},
	{"recvmsg6", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Recvmsg},
	{"getpeername4", ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername},
	{"getpeername6", ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername},
	{"sock_ops", ebpf.SockOps, ebpf.AttachCGroupSockOps},
	{"inet_egress", ebpf.CGroupSKB, ebpf.AttachCGroupInetEgress},
	{"sock_create", ebpf.CGroupSock, ebpf.AttachCGroupInetSockCreate},
	{"setsockopt", ebpf.CGroupSockopt, ebpf.AttachCGroupSetsockopt},
}

// Host checks what firma needs of the kernel and of this process.
func Host() []Check {
	checks := []Check{kernelVersion(), privileges()}
	bpfCheck := bpfSyscall()
	checks = append(checks, bpfCheck)
	if bpfCheck.Status == OK {
		checks = append(checks, cgroupAttach(), btfCheck(), skStorage())
	}
	checks = append(checks, cgroup2(), bpffs(), bpfLSM(), landlock(), seccomp(), systemd())
	return checks
}

func kernelVersion() Check {
	const name = "kernel"
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fail(name, "", "uname: %v", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	v, err := parseKernelVersion(release)
	if err != nil {
		return warn(name, "", "%s: %v", release, err)
	}
	if v[0] < minKernel[0] || v[0] == minKernel[0] && v[1] < minKernel[1] {
		return fail(name, fmt.Sprintf("upgrade to Linux %d.%d or later", minKernel[0], minKernel[1]),
			"Linux %s: older than %d.%d, which firma's cgroup hooks need", release, minKernel[0], minKernel[1])
	}
	return ok(name, "Linux %s (%s)", release, unix.ByteSliceToString(u.Machine[:]))
}

// capabilities the sidecar uses: loading programs and maps, attaching to cgroups, reading a
// cgroup's path from its id (open_by_handle_at), mounting bpffs.
var capabilities = []struct {
	bit  uint
	name string
}{
	{39, "CAP_BPF"}, {12, "CAP_NET_ADMIN"}, {21, "CAP_SYS_ADMIN"}, {2, "CAP_DAC_READ_SEARCH"},
}

func privileges() Check {
	const name = "privileges"
	effective, err := procStatusField("CapEff")
	if err != nil {
		return fail(name, "", "reading /proc/self/status: %v", err)
	}
	caps, err := strconv.ParseUint(effective, 16, 64)
	if err != nil {
		return fail(name, "", "CapEff %q: %v", effective, err)
	}
	var missing []string
	for _, c := range capabilities {
		if caps&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fail(name, "run firma sidecar and firma doctor as root (sudo)",
			"uid %d lacks %s: the sidecar cannot load or attach its programs, and doctor cannot inspect them", os.Geteuid(), strings.Join(missing, ", "))
	}
	return ok(name, "uid %d with CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH", os.Geteuid())
}

func procStatusField(field string) (string, error) {
	got, err := proc.StatusFields("self", field)
	if err != nil {
		return "", err
	}
	v, ok := got[field]
	if !ok {
		return "", fmt.Errorf("no %s line", field)
	}
	return v, nil
}

// trivialProgram loads `return 1` as a program of type pt expecting attach type at: the kernel
// refuses an attach type it does not know.
func trivialProgram(pt ebpf.ProgramType, at ebpf.AttachType) error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         pt,
		AttachType:   at,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		return err
	}
	return p.Close()
}

func bpfSyscall() Check {
	const name = "bpf"
	err := trivialProgram(ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect)
	switch {
	case err == nil:
		return ok(name, "bpf(2) loads cgroup programs")
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fail(name, "run as root (CAP_BPF and CAP_NET_ADMIN)", "bpf(2) refused: %v", err)
	case errors.Is(err, unix.ENOSYS):
		return fail(name, "use a kernel built with CONFIG_BPF_SYSCALL=y", "no bpf(2): %v", err)
	}
	return fail(name, "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF", "loading a cgroup program: %v", err)
}

func cgroupAttach() Check {
	const name = "cgroup_attach"
	var missing []string
	for _, a := range attachTypes {
		if err := trivialProgram(a.prog, a.at); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", a.name, err))
		}
	}
	if len(missing) > 0 {
		return fail(name, "use a newer kernel with CONFIG_CGROUP_BPF=y", "the kernel refuses %s", strings.Join(missing, ", "))
	}
	return ok(name, "all %d cgroup hooks firma attaches are available", len(attachTypes))
}

func btfCheck() Check {
	const name = "btf"
	if _, err := btf.LoadKernelSpec(); err != nil {
		return fail(name, "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (socket storage maps need it)", "no kernel BTF: %v", err)
	}
	return ok(name, "/sys/kernel/btf/vmlinux")
}

func skStorage() Check {
	const name = "sk_storage"
	if err := features.HaveMapType(ebpf.SkStorage); err != nil {
		return fail(name, "use Linux 5.2 or later with BTF", "socket-local storage maps: %v", err)
	}
	return ok(name, "socket-local storage maps available")
}

func cgroup2() Check {
	const name = "cgroup2"
	mount, err := cgroup.FindV2Mount()
	if err != nil {
		return fail(name, "mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup), or boot with systemd.unified_cgroup_hierarchy=1", "%v", err)
	}
	return ok(name, "mounted at %s", mount)
}

func bpffs() Check {
	const name = "bpffs"
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return warn(name, "the sidecar mounts it at start; to mount it now: mount -t bpf bpf /sys/fs/bpf",
			"no bpf filesystem at /sys/fs/bpf yet")
	}
	return ok(name, "mounted at /sys/fs/bpf")
}

func bpfLSM() Check {
	const name = "bpf_lsm"
	data, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return warn(name, "mount securityfs, and boot with lsm=…,bpf", "cannot read the active LSMs: %v", err)
	}
	active := strings.TrimSpace(string(data))
	for _, l := range strings.Split(active, ",") {
		if l != "bpf" {
			continue
		}
		// Active is not enough: some kernels (and VMs) refuse to load LSM programs all the same.
		if err := features.HaveProgramType(ebpf.LSM); err != nil {
			return warn(name, "use a kernel that can load BPF LSM programs",
				"active (%s) but LSM programs cannot be loaded (%v): other socket families, bpf() and tun/tap are refused only by firma run's sandbox and by hardened units (RestrictAddressFamilies=, SystemCallFilter=, PrivateDevices=), not for other processes placed in the enforced cgroup", active, err)
		}
		return ok(name, "active (%s)", active)
	}
	return warn(name, "add bpf to the kernel's lsm= boot parameter",
		"not active (%s): other socket families, bpf() and tun/tap are refused only by firma run's sandbox and by hardened units (RestrictAddressFamilies=, SystemCallFilter=, PrivateDevices=), not for other processes placed in the enforced cgroup", active)
}

func landlock() Check {
	const name = "landlock"
	const createRulesetVersion = 1 // LANDLOCK_CREATE_RULESET_VERSION
	abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, createRulesetVersion)
	if errno != 0 {
		return warn(name, "boot a kernel with CONFIG_SECURITY_LANDLOCK and landlock in lsm=",
			"not available (%v): firma run cannot add a Landlock layer", errno)
	}
	return ok(name, "ABI version %d", abi)
}

func seccomp() Check {
	const name = "seccomp"
	// A filter from address 0: EFAULT (or EACCES without no_new_privs) means filters are
	// supported; nothing is installed either way.
	err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, 0, 0, 0)
	switch {
	case errors.Is(err, unix.EFAULT), errors.Is(err, unix.EACCES):
		// firma run records its filter's refusals through a user-notification listener (Linux 5.0).
		var sizes struct{ notif, resp, data uint16 } // struct seccomp_notif_sizes
		if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&sizes))); errno != 0 {
			return warn(name, "use Linux 5.0 or later",
				"filters supported, but no user notifications (%v): firma run's sandbox refusals will not be in the audit log", errno)
		}
		return ok(name, "filters and user notifications supported (firma run's refusals are audited)")
	case err == nil:
		return fail(name, "", "prctl(PR_SET_SECCOMP) accepted a null filter")
	}
	return fail(name, "use a kernel built with CONFIG_SECCOMP_FILTER=y", "seccomp filters unavailable: %v", err)
}

func systemd() Check {
	const name = "systemd"
	comm, _ := os.ReadFile("/proc/1/comm")
	pid1 := strings.TrimSpace(string(comm))
	if fi, err := os.Stat("/run/systemd/system"); err == nil && fi.IsDir() {
		return ok(name, "systemd is PID 1: firma run places agents in transient scopes; systemd/ units apply")
	}
	return ok(name, "not running under systemd (PID 1 is %q): firma run places agents through cgroupfs; the systemd units do not apply", pid1)
}
