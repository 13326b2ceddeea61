package runner

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Init is the init step, `firma run __init`: started by the runner as root, PID 1 of a new PID
// namespace, inside the agent's cgroup and a new mount namespace. It reads the spec from fd 3,
// prepares the namespace, starts the exec step (`firma run __exec`) as its child, and then stays
// as the namespace's init (init.go): it reaps, forwards the signals the runner writes to fd 3, and
// returns the agent's status (128+n for signal n). Setup errors go to fd 4 (close-on-exec in the
// agent: the runner reads EOF there once the agent is exec'd); the status is then 1.
func Init() int {
	// Mounts are per process, but the cgroup namespace is per thread: everything from here to the
	// start of the exec step happens on this one, and the exec step is forked from it.
	runtime.LockOSThread()
	// Nothing inherited beyond stdio, the spec and the report pipes may reach the exec step.
	markInheritedCloexec(3)
	// Named for ps (on the host and in the agent's /proc), not after /proc/self/exe.
	os.WriteFile("/proc/self/comm", []byte(initComm), 0)
	report := os.NewFile(4, "firma-run-errors")
	specFile := os.NewFile(3, "firma-run-spec")
	if report == nil || specFile == nil {
		fmt.Fprintln(os.Stderr, "firma run __init is internal to firma run")
		return 1
	}
	fail := func(err error) int {
		report.WriteString(err.Error())
		report.Close()
		return 1
	}
	// Signals sent to init are caught (and dropped) rather than left to the Go runtime, which
	// would end init — and with it the namespace — on a terminal's SIGINT meant for the agent.
	signal.Notify(make(chan os.Signal, 1))
	in := bufio.NewReader(specFile)
	line, err := in.ReadBytes('\n')
	if err != nil {
		return fail(fmt.Errorf("reading the spec: %w", err))
	}
	var spec childSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		return fail(fmt.Errorf("reading the spec: %w", err))
	}
	if err := setupNamespace(spec, &realChildOS{}); err != nil {
		return fail(err)
	}
	code, err := superviseAgent(&realInit{spec: line, report: report, notify: openNotify()}, readSignals(in))
	if err != nil {
		return fail(err)
	}
	return code
}

// ExecAgent is the exec step, `firma run __exec`: PID 2 of the agent's PID namespace, started by
// init with the spec on fd 3 and the runner's report pipe on fd 4. It drops privileges, seals the
// process and execs the agent (child.go, execAgent); it returns only on failure, after writing the
// reason to fd 4.
func ExecAgent() error {
	// Capabilities, the user, no_new_privs, Landlock and seccomp are per thread: everything from
	// here to the exec happens on this one.
	runtime.LockOSThread()
	report := os.NewFile(4, "firma-run-errors")
	specFile := os.NewFile(3, "firma-run-spec")
	if report == nil || specFile == nil {
		return errors.New("firma run __exec is internal to firma run")
	}
	fail := func(err error) error {
		report.WriteString(err.Error())
		report.Close()
		return err
	}
	var spec childSpec
	err := json.NewDecoder(specFile).Decode(&spec)
	specFile.Close()
	if err != nil {
		return fail(fmt.Errorf("reading the spec: %w", err))
	}
	return fail(execAgent(spec, &realChildOS{ppid: os.Getppid(), notify: openNotify()}))
}

// initComm is the init step's process name.
const initComm = "firma-init"

// realInit is initProc on the kernel.
type realInit struct {
	spec   []byte   // the spec's JSON line, passed on to the exec step
	report *os.File // fd 4, passed on to the exec step and closed here once it has started
	notify *os.File // fd 5 when the runner passed it, likewise; nil otherwise
}

func (r *realInit) Start() (int, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer specR.Close()
	files := []uintptr{0, 1, 2, specR.Fd(), r.report.Fd()}
	if r.notify != nil {
		files = append(files, r.notify.Fd())
		defer r.notify.Close() // the exec step's alone from here
	}
	pid, err := syscall.ForkExec(selfExe, []string{"firma", "run", ExecArg}, &syscall.ProcAttr{
		Env:   []string{},
		Files: files,
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		specW.Close()
		return 0, fmt.Errorf("starting the exec step: %w", err)
	}
	// The exec step reports its own errors; init keeps no write end of the report pipe, so the
	// runner sees EOF as soon as the agent is exec'd.
	r.report.Close()
	_, err = specW.Write(r.spec)
	specW.Close()
	if err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		return pid, fmt.Errorf("passing the spec to the exec step: %w", err)
	}
	return pid, nil
}

func (*realInit) Wait() (int, syscall.WaitStatus, error) {
	var ws syscall.WaitStatus
	pid, err := syscall.Wait4(-1, &ws, 0, nil)
	return pid, ws, err
}

func (*realInit) Kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// realChildOS is childOS on the kernel.
type realChildOS struct {
	ppid   int
	notify *os.File // the runner's notify socket; nil without one
}

func (*realChildOS) Stat(p string) (fs.FileInfo, error)     { return os.Stat(p) }
func (*realChildOS) EvalSymlinks(p string) (string, error)  { return filepath.EvalSymlinks(p) }
func (*realChildOS) ReadFile(p string) ([]byte, error)      { return os.ReadFile(p) }
func (*realChildOS) Chdir(dir string) error                 { return unix.Chdir(dir) }
func (*realChildOS) Mkdir(p string, perm os.FileMode) error { return os.Mkdir(p, perm) }
func (*realChildOS) Symlink(target, p string) error         { return os.Symlink(target, p) }
func (*realChildOS) CloseInherited() error                  { return markInheritedCloexec(3) }
func (*realChildOS) ScopeLandlock() error                   { return landlockScope() }
func (*realChildOS) UnshareCgroup() error                   { return unix.Unshare(unix.CLONE_NEWCGROUP) }
func (*realChildOS) NoNewPrivs() error                      { return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
func (*realChildOS) Detach(target string) error             { return unix.Unmount(target, unix.MNT_DETACH) }
func (*realChildOS) MakePrivate() error {
	return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
}
func (*realChildOS) Bind(source, target string) error {
	return unix.Mount(source, target, "", unix.MS_BIND|unix.MS_REC, "")
}
func (*realChildOS) ClearAmbient() error {
	return unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
}
func (*realChildOS) WriteFile(p string, b []byte, m os.FileMode) error { return os.WriteFile(p, b, m) }

// MountProc replaces the host's /proc (and everything mounted below it) with the PID namespace's
// own: the agent sees its init, itself and its children, nothing else.
func (*realChildOS) MountProc() error {
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's /proc: %w", err)
	}
	return unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
}

// MountDevpts mounts a devpts instance of the agent's own: ptys it opens are its own, and no other
// session's terminal is reachable.
func (*realChildOS) MountDevpts(target string) error {
	return unix.Mount("devpts", target, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
}

// Seccomp installs the filter of seccomp.go on this thread (the exec that follows keeps it). With
// the runner's notify socket, the filter hands its refusals to a listener, which goes to the
// runner; where the kernel gives no listener (one exists up the process tree already, or the
// kernel has none) the filter answers by itself, and the runner is told why.
func (c *realChildOS) Seccomp() error {
	arch, err := nativeSeccompArch()
	if err != nil {
		return err
	}
	if c.notify != nil {
		defer c.notify.Close()
		fd, err := installSeccomp(arch, true)
		if err == nil {
			defer unix.Close(fd)
			if err := unix.Sendmsg(int(c.notify.Fd()), []byte("listener"), unix.UnixRights(fd), nil, 0); err != nil {
				return fmt.Errorf("handing the seccomp listener to firma run: %w", err)
			}
			return nil
		}
		c.notify.WriteString("no seccomp notification listener: " + err.Error())
	}
	_, err = installSeccomp(arch, false)
	return err
}

// installSeccomp installs the filter for arch, with a notification listener (returned) or without.
func installSeccomp(arch seccompArch, listener bool) (int, error) {
	ins, err := seccompFilter(arch, listener)
	if err != nil {
		return -1, err
	}
	filter, err := assembleSeccomp(ins)
	if err != nil {
		return -1, err
	}
	flags := uintptr(0)
	if listener {
		flags = unix.SECCOMP_FILTER_FLAG_NEW_LISTENER
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	fd, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// notifyFD is the runner's notify socket in the init and exec steps: where the exec step sends the
// seccomp listener (SCM_RIGHTS), or a line saying why there is none.
const notifyFD = 5

// openNotify returns the notify socket, or nil when the runner passed none.
func openNotify() *os.File {
	if _, err := unix.FcntlInt(notifyFD, unix.F_GETFD, 0); err != nil {
		return nil
	}
	return os.NewFile(notifyFD, "firma-run-notify")
}

func (*realChildOS) MountTmpfs(target, opts string, ro bool) error {
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if ro {
		flags |= unix.MS_RDONLY
	}
	return unix.Mount("tmpfs", target, "tmpfs", flags, opts)
}

func (*realChildOS) SetReadOnly(target string, ro, recursive bool) error {
	attr := &unix.MountAttr{}
	if ro {
		attr.Attr_set = unix.MOUNT_ATTR_RDONLY
	} else {
		attr.Attr_clr = unix.MOUNT_ATTR_RDONLY
	}
	var flags uint
	if recursive {
		flags = unix.AT_RECURSIVE
	}
	return unix.MountSetattr(unix.AT_FDCWD, target, flags, attr)
}

func (*realChildOS) DropBounding(keep []int) error {
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if contains(keep, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("capability %d: %w", c, err)
		}
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (*realChildOS) SetUser(uid, gid int, groups []int) error {
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := unix.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := unix.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	return nil
}

func (c *realChildOS) ParentDeathSignal() error {
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	if os.Getppid() != c.ppid {
		return errors.New("firma run exited while the agent was being prepared")
	}
	return nil
}

func (*realChildOS) SetCaps(keep []int) error {
	var set [2]uint32
	for _, c := range keep {
		set[c/32] |= 1 << (c % 32)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: set[0], Permitted: set[0]},
		{Effective: set[1], Permitted: set[1]},
	}
	return unix.Capset(&hdr, &data[0])
}

func (*realChildOS) Exec(argv, env []string) error {
	// Look the command up in the agent's PATH, with the agent's credentials.
	if p, ok := lookupEnv(env, "PATH"); ok {
		os.Setenv("PATH", p)
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return unix.Exec(prog, argv, env)
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
