package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Init is the init step, `firma run __init`: started by the runner as root inside the agent's
// cgroup and a new mount namespace, it reads the spec from fd 3, prepares the namespace and the
// privileges, and execs the agent. It returns only on failure, after writing the reason to fd 4
// (close-on-exec: the runner reads EOF there once the agent is exec'd).
func Init() error {
	// Capabilities, no_new_privs and the cgroup namespace are per thread: everything from here to
	// the exec happens on this one.
	runtime.LockOSThread()
	ppid := os.Getppid()
	report := os.NewFile(4, "firma-run-errors")
	specFile := os.NewFile(3, "firma-run-spec")
	if report == nil || specFile == nil {
		return errors.New("firma run __init is internal to firma run")
	}
	unix.CloseOnExec(4)
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
	return fail(setupChild(spec, &realChildOS{ppid: ppid}))
}

// realChildOS is childOS on the kernel.
type realChildOS struct {
	ppid int
}

func (*realChildOS) Stat(p string) (fs.FileInfo, error)    { return os.Stat(p) }
func (*realChildOS) EvalSymlinks(p string) (string, error) { return filepath.EvalSymlinks(p) }
func (*realChildOS) ReadFile(p string) ([]byte, error)     { return os.ReadFile(p) }
func (*realChildOS) Chdir(dir string) error                { return unix.Chdir(dir) }
func (*realChildOS) UnshareCgroup() error                  { return unix.Unshare(unix.CLONE_NEWCGROUP) }
func (*realChildOS) NoNewPrivs() error                     { return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
func (*realChildOS) Detach(target string) error            { return unix.Unmount(target, unix.MNT_DETACH) }
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
