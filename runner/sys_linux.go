package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/coreos/go-systemd/v22/util"
	"github.com/godbus/dbus/v5"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
)

// InitArg, ExecArg and HoldArg are the hidden `firma run` modes the runner re-executes itself in:
// `firma run __init` prepares the agent's namespaces and stays as their init; `firma run __exec`
// (its child) drops privileges, seals the process and execs the agent; `firma run __hold` is the
// placeholder a systemd scope is created around.
const (
	InitArg = "__init"
	ExecArg = "__exec"
	HoldArg = "__hold"
)

// selfExe is this binary as the kernel knows it, valid in the child until it execs.
const selfExe = "/proc/self/exe"

func realHost(log zerolog.Logger) (*host, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("firma run needs root: it creates cgroups and mount namespaces (try sudo, with --user to run the agent as yourself)")
	}
	// What the invoking shell left open without close-on-exec (a socket made outside every
	// enforced cgroup, say) stays with firma run: nothing it starts inherits it.
	if err := markInheritedCloexec(3); err != nil {
		return nil, err
	}
	h := &host{
		landlockABI: landlockABI,
		dial: func(ctx context.Context, socket string) (sidecar, error) {
			return control.Dial(ctx, socket)
		},
		mountinfo:    cgroup.SelfMounts,
		fs:           realCgroupFS{},
		launch:       startAgent,
		notify:       notifySignals,
		fromTerminal: fromTerminal,
		lookupUser:   lookupUser,
		homes:        homes,
		exists:       func(p string) bool { _, err := os.Stat(p); return err == nil },
		mkdirTemp:    func() (string, error) { return os.MkdirTemp("", "firma-run-") },
		removeAll:    os.Remove, // the staging directory is only ever a mount point
		getwd:        os.Getwd,
		pid:          os.Getpid(),
		suffix: func() string {
			b := make([]byte, 4)
			rand.Read(b)
			return hex.EncodeToString(b)
		},
	}
	if util.IsRunningSystemd() {
		h.systemd = func(ctx context.Context, mount, desc string) (placer, error) {
			conn, err := sdbus.NewSystemdConnectionContext(ctx)
			if err != nil {
				return nil, fmt.Errorf("connecting to systemd: %w", err)
			}
			return systemdPlacer{conn: dbusConn{conn}, fs: realCgroupFS{}, mount: mount, hold: startPlaceholder, desc: desc}, nil
		}
	}
	return h, nil
}

// realCgroupFS operates on the cgroup2 filesystem.
type realCgroupFS struct{}

func (realCgroupFS) IsDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

func (realCgroupFS) Mkdir(dir string) error { return os.Mkdir(dir, 0o755) }

func (realCgroupFS) Open(dir string) (int, error) {
	return unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

func (realCgroupFS) Close(fd int) error { return unix.Close(fd) }

func (realCgroupFS) Kill(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Before Linux 5.14 there is no cgroup.kill: kill what is listed, until nothing is.
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	return nil
}

func (realCgroupFS) Populated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no populated line", dir)
}

func (realCgroupFS) Rmdir(dir string) error { return unix.Rmdir(dir) }

// startAgent starts the init step (`firma run __init`) cloned into the agent's cgroup with new
// mount and PID namespaces, sends it the spec, and returns once the agent is exec'd or the setup
// failed. The spec pipe stays open: signals for the agent go down it.
func startAgent(l launch) (agent, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		specR.Close()
		specW.Close()
		return nil, err
	}
	defer errR.Close()
	// The exec step sends its seccomp notification listener here (fd 5), or why there is none.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		specR.Close()
		specW.Close()
		errW.Close()
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	notifyR, notifyW := os.NewFile(uintptr(pair[0]), "firma-run-notify"), os.NewFile(uintptr(pair[1]), "firma-run-notify")
	defer notifyR.Close()
	cmd := &exec.Cmd{
		Path:       selfExe,
		Args:       []string{"firma", "run", InitArg},
		Env:        []string{},
		Stdin:      l.Stdin,
		Stdout:     l.Stdout,
		Stderr:     l.Stderr,
		ExtraFiles: []*os.File{specR, errW, notifyW}, // fd 3, 4 and 5 in the init step
		WaitDelay:  2 * time.Second,
		SysProcAttr: &syscall.SysProcAttr{
			UseCgroupFD: true,
			CgroupFD:    l.CgroupFD,
			Cloneflags:  syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
			Pdeathsig:   syscall.SIGKILL,
		},
	}
	p := &agentProc{cmd: cmd, signals: specW, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal fires when the forking thread exits, so this goroutine keeps its
		// thread until the agent is gone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		p.status = statusOf(cmd.ProcessState)
		specW.Close()
		close(p.exited)
	}()
	err = <-started
	specR.Close()
	errW.Close()
	notifyW.Close()
	if err != nil {
		specW.Close()
		return nil, fmt.Errorf("%w: starting the init step: %v", ErrSetup, err)
	}
	werr := json.NewEncoder(specW).Encode(l.Spec) // one line: init reads signals after it
	msg, rerr := io.ReadAll(errR)                 // EOF when the agent is exec'd (the pipe is close-on-exec there)
	if werr != nil || rerr != nil || len(msg) > 0 {
		cmd.Process.Kill()
		<-p.exited
		if len(msg) == 0 {
			msg = []byte(fmt.Sprint(errors.Join(werr, rerr)))
		}
		return nil, fmt.Errorf("%w: %s", ErrSetup, bytes.TrimSpace(msg))
	}
	listener, why, err := receiveListener(notifyR)
	switch {
	case err != nil:
		l.Log.Warn().Err(err).Msg("reading the seccomp listener: the sandbox's refusals will not be in the audit log")
	case listener < 0:
		l.Log.Warn().Str(logfields.Reason, why).Msg("the sandbox's seccomp refusals will not be in the audit log")
	default:
		arch, _ := nativeSeccompArch() // the exec step built its filter from the same table
		go superviseSeccomp(listener, arch, l.Refused, p.exited)
	}
	return p, nil
}

// agentProc is the init step, which stands for the agent: its status is the agent's, and signals
// for the agent are written to it.
type agentProc struct {
	cmd     *exec.Cmd
	signals *os.File // the spec pipe: init forwards each signal number written here to the agent
	exited  chan struct{}
	status  exitStatus
}

func (p *agentProc) PID() int { return p.cmd.Process.Pid }

func (p *agentProc) Signal(sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("cannot forward %v", sig)
	}
	select {
	case <-p.exited:
		return os.ErrProcessDone
	default:
	}
	return writeSignal(p.signals, s)
}

func (p *agentProc) Wait() exitStatus {
	<-p.exited
	return p.status
}

func statusOf(ps *os.ProcessState) exitStatus {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitStatus{Signal: ws.Signal()}
	}
	return exitStatus{Code: ps.ExitCode()}
}

// forwarded are the signals firma run passes to the agent.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

func notifySignals() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, forwarded...)
	return ch, func() { signal.Stop(ch) }
}

// fromTerminal reports whether sig is one a terminal sends to its whole foreground process group
// (SIGINT, SIGQUIT) while we are that group: the agent, which shares our group, has it already.
func fromTerminal(sig os.Signal) bool {
	if sig != syscall.SIGINT && sig != syscall.SIGQUIT {
		return false
	}
	for _, fd := range []int{0, 1, 2} {
		if pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP); err == nil {
			return pgrp == unix.Getpgrp()
		}
	}
	return false
}

// lookupUser resolves --user: a name, a uid, or uid:gid.
func lookupUser(spec string) (agentUser, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr != nil {
			return agentUser{}, err
		}
		if u, err = user.LookupId(name); err != nil {
			// A numeric uid without a passwd entry: run as it, with a gid of the same number.
			u = &user.User{Uid: name, Gid: name, Username: name, HomeDir: "/"}
		}
	}
	au := agentUser{Name: u.Username, Home: u.HomeDir}
	if au.UID, err = strconv.Atoi(u.Uid); err != nil {
		return agentUser{}, fmt.Errorf("uid %q: %w", u.Uid, err)
	}
	gid := u.Gid
	if hasGroup {
		gid = group
		if g, err := user.LookupGroup(group); err == nil {
			gid = g.Gid
		}
	}
	if au.GID, err = strconv.Atoi(gid); err != nil {
		return agentUser{}, fmt.Errorf("group %q: not a group name or gid", gid)
	}
	au.Groups = []int{au.GID}
	if ids, err := u.GroupIds(); err == nil && !hasGroup {
		for _, id := range ids {
			if n, err := strconv.Atoi(id); err == nil && n != au.GID {
				au.Groups = append(au.Groups, n)
			}
		}
	}
	return au, nil
}

// homes are the homes "~" stands for: the agent user's (or, without --user, ours), and under sudo
// the invoking user's as well — their secrets are what a root agent could otherwise read.
func homes(u *agentUser) []string {
	var out []string
	if u != nil {
		out = append(out, u.Home)
	} else if cur, err := user.Current(); err == nil {
		out = append(out, cur.HomeDir)
	}
	if name := os.Getenv("SUDO_USER"); name != "" {
		if su, err := user.Lookup(name); err == nil {
			out = append(out, su.HomeDir)
		}
	}
	var clean []string
	for _, h := range out {
		if h != "" && h != "/" {
			clean = append(clean, filepath.Clean(h))
		}
	}
	return dedupe(clean)
}

// dbusConn is systemdConn over go-systemd's D-Bus client.
type dbusConn struct{ c *sdbus.Conn }

func (d dbusConn) StartScope(ctx context.Context, unit, slice, desc string, pid int) error {
	props := []sdbus.Property{
		sdbus.PropSlice(slice),
		sdbus.PropDescription(desc),
		sdbus.PropPids(uint32(pid)),
		{Name: "CollectMode", Value: dbus.MakeVariant("inactive-or-failed")},
	}
	ch := make(chan string, 1)
	if _, err := d.c.StartTransientUnitContext(ctx, unit, "fail", props, ch); err != nil {
		return err
	}
	return waitJob(ctx, ch)
}

func (d dbusConn) StopUnit(ctx context.Context, unit string) error {
	ch := make(chan string, 1)
	if _, err := d.c.StopUnitContext(ctx, unit, "replace", ch); err != nil {
		return err
	}
	return waitJob(ctx, ch)
}

func (d dbusConn) Close() { d.c.Close() }

func waitJob(ctx context.Context, ch <-chan string) error {
	select {
	case r := <-ch:
		if r != "done" {
			return fmt.Errorf("systemd job %s", r)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// placeholderProc is `firma run __hold`: it waits for its stdin to close.
type placeholderProc struct {
	cmd  *exec.Cmd
	w    *os.File
	once sync.Once
}

func startPlaceholder() (placeholder, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(selfExe, "run", HoldArg)
	cmd.Args[0] = "firma"
	cmd.Stdin = r
	cmd.Env = []string{}
	err = cmd.Start() // no parent-death signal needed: our death closes the pipe, and it exits
	r.Close()
	if err != nil {
		w.Close()
		return nil, err
	}
	return &placeholderProc{cmd: cmd, w: w}, nil
}

func (p *placeholderProc) PID() int { return p.cmd.Process.Pid }

func (p *placeholderProc) Release() {
	p.once.Do(func() {
		p.w.Close()
		p.cmd.Wait()
	})
}

// Hold is the placeholder's whole life: wait until firma run closes our stdin.
func Hold() error {
	_, err := io.Copy(io.Discard, os.Stdin)
	return err
}
