package runner

// Capability numbers from linux/capability.h, for the ones the runner names.
const (
	capChown          = 0
	capDacOverride    = 1
	capDacReadSearch  = 2
	capFowner         = 3
	capFsetid         = 4
	capKill           = 5
	capSetgid         = 6
	capSetuid         = 7
	capSetpcap        = 8
	capNetBindService = 10
	capNetAdmin       = 12
	capNetRaw         = 13
	capSysModule      = 16
	capSysRawio       = 17
	capSysChroot      = 18
	capSysPtrace      = 19
	capSysAdmin       = 21
	capMknod          = 27
	capAuditWrite     = 29
	capPerfmon        = 38
	capBPF            = 39
)

// rootKeep is what an agent running as root keeps: enough to own and change its own files and
// processes (Docker's default set, less CAP_NET_RAW, CAP_MKNOD, CAP_SETFCAP and CAP_SETPCAP).
// Everything else is dropped from every set, notably:
//
//   - CAP_NET_RAW, CAP_NET_ADMIN: raw and packet sockets and network configuration bypass the
//     cgroup connect hooks;
//   - CAP_SYS_ADMIN: mount/umount (uncover hidden paths, remount the cgroup tree read-write),
//     setns, and most of the rest of the kernel;
//   - CAP_BPF, CAP_PERFMON: load, detach or read firma's programs and maps;
//   - CAP_SYS_PTRACE: read the sidecar's memory (its CA key, injected credentials);
//   - CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_MKNOD: kernel code, /dev/mem, raw disks — the CA key read
//     straight off the block device;
//   - CAP_DAC_READ_SEARCH: open_by_handle_at, which reaches files whatever covers their path.
//
// An agent run with --user as another uid keeps no capability at all.
var rootKeep = []int{
	capChown, capDacOverride, capFowner, capFsetid, capKill, capSetgid, capSetuid,
	capNetBindService, capSysChroot, capAuditWrite,
}
