package runner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
)

// transcript collects what the fakes were asked to do, one line per side effect.
type transcript struct{ lines []string }

func (t *transcript) add(format string, a ...any) {
	t.lines = append(t.lines, fmt.Sprintf(format, a...))
}

func (t *transcript) String() string { return strings.Join(t.lines, "\n") }

func assertTranscript(tb testing.TB, tr *transcript, want string) {
	tb.Helper()
	want = strings.TrimSpace(want)
	var lines []string
	for _, l := range strings.Split(want, "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	if got := tr.String(); got != strings.Join(lines, "\n") {
		tb.Fatalf("transcript:\n%s\n\nwant:\n%s", got, strings.Join(lines, "\n"))
	}
}

// fakeFile is what fakeChildOS knows about a path.
type fakeFile struct {
	dir     bool
	link    string // symlink target
	content string
}

type fakeInfo struct {
	name string
	dir  bool
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return map[bool]fs.FileMode{true: fs.ModeDir}[f.dir] }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.dir }
func (f fakeInfo) Sys() any           { return nil }

// fakeChildOS is childOS over a map of paths; it records every call that changes something.
type fakeChildOS struct {
	tr    *transcript
	files map[string]fakeFile
	fail  string // a transcript prefix whose call fails
}

func (f *fakeChildOS) resolve(p string) (string, fakeFile, bool) {
	for range 10 {
		ff, ok := f.files[p]
		if !ok {
			return p, ff, false
		}
		if ff.link == "" {
			return p, ff, true
		}
		p = ff.link
	}
	return p, fakeFile{}, false
}

func (f *fakeChildOS) do(format string, a ...any) error {
	line := fmt.Sprintf(format, a...)
	f.tr.add("%s", line)
	if f.fail != "" && strings.HasPrefix(line, f.fail) {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeChildOS) Stat(p string) (fs.FileInfo, error) {
	_, ff, ok := f.resolve(p)
	if !ok {
		return nil, fs.ErrNotExist
	}
	return fakeInfo{name: p, dir: ff.dir}, nil
}

func (f *fakeChildOS) EvalSymlinks(p string) (string, error) {
	real, _, ok := f.resolve(p)
	if !ok {
		return "", fs.ErrNotExist
	}
	return real, nil
}

func (f *fakeChildOS) ReadFile(p string) ([]byte, error) {
	_, ff, ok := f.resolve(p)
	if !ok {
		return nil, fs.ErrNotExist
	}
	return []byte(ff.content), nil
}

func (f *fakeChildOS) WriteFile(p string, data []byte, perm os.FileMode) error {
	f.files[p] = fakeFile{content: string(data)}
	return f.do("write %s %04o %q", p, perm, data)
}

func (f *fakeChildOS) Mkdir(p string, perm os.FileMode) error {
	f.files[p] = fakeFile{dir: true}
	return f.do("mkdir %s %04o", p, perm)
}
func (f *fakeChildOS) Symlink(target, p string) error { return f.do("symlink %s -> %s", p, target) }
func (f *fakeChildOS) MakePrivate() error             { return f.do("mount --make-rprivate /") }
func (f *fakeChildOS) MountProc() error               { return f.do("mount proc /proc") }
func (f *fakeChildOS) MountDevpts(target string) error {
	return f.do("mount devpts %s", target)
}
func (f *fakeChildOS) MountTmpfs(target, opts string, ro bool) error {
	return f.do("mount tmpfs %s %s ro=%v", target, opts, ro)
}
func (f *fakeChildOS) Bind(source, target string) error { return f.do("bind %s %s", source, target) }
func (f *fakeChildOS) SetReadOnly(target string, ro, recursive bool) error {
	return f.do("setattr %s ro=%v recursive=%v", target, ro, recursive)
}
func (f *fakeChildOS) Detach(target string) error { return f.do("umount -l %s", target) }
func (f *fakeChildOS) Chdir(dir string) error     { return f.do("chdir %s", dir) }
func (f *fakeChildOS) UnshareCgroup() error       { return f.do("unshare cgroup") }
func (f *fakeChildOS) DropBounding(keep []int) error {
	return f.do("capbset keep %s", capList(keep))
}
func (f *fakeChildOS) ClearAmbient() error { return f.do("ambient clear") }
func (f *fakeChildOS) SetUser(uid, gid int, groups []int) error {
	return f.do("setuser %d:%d groups=%v", uid, gid, groups)
}
func (f *fakeChildOS) ParentDeathSignal() error { return f.do("pdeathsig KILL") }
func (f *fakeChildOS) SetCaps(keep []int) error { return f.do("capset %s", capList(keep)) }
func (f *fakeChildOS) NoNewPrivs() error        { return f.do("no_new_privs") }
func (f *fakeChildOS) CloseInherited() error    { return f.do("cloexec 3-") }
func (f *fakeChildOS) ScopeLandlock() error {
	return f.do("landlock scope abstract_unix_socket,signal")
}
func (f *fakeChildOS) Seccomp() error { return f.do("seccomp") }
func (f *fakeChildOS) Exec(argv, env []string) error {
	return f.do("exec %s env=%s", strings.Join(argv, " "), strings.Join(env, ","))
}

func hostFiles() map[string]fakeFile {
	return map[string]fakeFile{
		"/etc/ssl/certs/ca-certificates.crt": {content: "SYSTEM ROOTS\n"},
		"/usr/lib/ssl/cert.pem":              {link: "/etc/ssl/certs/ca-certificates.crt"},
		"/etc/resolv.conf":                   {content: "nameserver 10.0.0.1\nsearch corp.example\n"},
		"/run/firma/control.sock":            {},
		"/var/lib/firma/ca":                  {dir: true},
		"/run/docker.sock":                   {},
		"/var/run":                           {link: "/run"},
		"/var/run/docker.sock":               {link: "/run/docker.sock"},
		"/root/.ssh":                         {dir: true},
		"/root/.netrc":                       {},
		"/etc":                               {dir: true},
		"/usr":                               {dir: true},
		"/work/proj":                         {dir: true},
		"/sys":                               {dir: true},
		"/proc/sys":                          {dir: true},
		"/proc/sysrq-trigger":                {},
		"/sys/fs/cgroup/unified":             {dir: true},
		"/dev":                               {dir: true},
		"/dev/null":                          {},
		"/dev/zero":                          {},
		"/dev/full":                          {},
		"/dev/random":                        {},
		"/dev/urandom":                       {},
		"/dev/tty":                           {},
		"/dev/dri":                           {dir: true},
	}
}

func testSpec() childSpec {
	return childSpec{
		Argv:       []string{"claude", "code"},
		Env:        []string{"PATH=/usr/bin"},
		Dir:        "/work/proj",
		Staging:    "/tmp/firma-run-1",
		CAPEM:      "-----BEGIN CERTIFICATE-----\nFIRMA\n-----END CERTIFICATE-----\n",
		Bundles:    []string{"/etc/ssl/certs/ca-certificates.crt", "/usr/lib/ssl/cert.pem", "/etc/ssl/cert.pem"},
		Nameserver: "127.0.0.1",
		ReadOnly:   []string{"/etc", "/usr", "/boot"},
		Workspace:  "/work/proj",
		Hide:       []string{"/run/firma/control.sock", "/var/lib/firma/ca", "/run/docker.sock", "/root/.ssh", "/root/.netrc", "/root/.aws"},
		Protect:    []string{"/sys", "/proc/sys", "/proc/sysrq-trigger", "/sys/fs/cgroup/unified"},
		UID:        -1,
		GID:        -1,
		Keep:       rootKeep,
		Landlock:   true,
	}
}

func TestSetupNamespaceTranscript(t *testing.T) {
	tr := &transcript{}
	sys := &fakeChildOS{tr: tr, files: hostFiles()}
	if err := setupNamespace(testSpec(), sys); err != nil {
		t.Fatal(err)
	}
	assertTranscript(t, tr, `
		mount --make-rprivate /
		mount proc /proc
		bind /etc /etc
		setattr /etc ro=true recursive=true
		bind /usr /usr
		setattr /usr ro=true recursive=true
		bind /work/proj /work/proj
		setattr /work/proj ro=false recursive=false
		mount tmpfs /tmp/firma-run-1 mode=0700,size=16m ro=false
		write /tmp/firma-run-1/hidden 0000 ""
		mkdir /tmp/firma-run-1/dev 0700
		bind /dev /tmp/firma-run-1/dev
		mount tmpfs /dev mode=0755,size=64k ro=false
		write /dev/null 0644 ""
		bind /tmp/firma-run-1/dev/null /dev/null
		write /dev/zero 0644 ""
		bind /tmp/firma-run-1/dev/zero /dev/zero
		write /dev/full 0644 ""
		bind /tmp/firma-run-1/dev/full /dev/full
		write /dev/random 0644 ""
		bind /tmp/firma-run-1/dev/random /dev/random
		write /dev/urandom 0644 ""
		bind /tmp/firma-run-1/dev/urandom /dev/urandom
		write /dev/tty 0644 ""
		bind /tmp/firma-run-1/dev/tty /dev/tty
		mkdir /dev/pts 0755
		mkdir /dev/shm 0755
		mount devpts /dev/pts
		mount tmpfs /dev/shm mode=1777,size=64m ro=false
		symlink /dev/ptmx -> pts/ptmx
		symlink /dev/fd -> /proc/self/fd
		symlink /dev/stdin -> /proc/self/fd/0
		symlink /dev/stdout -> /proc/self/fd/1
		symlink /dev/stderr -> /proc/self/fd/2
		setattr /dev ro=true recursive=false
		write /tmp/firma-run-1/ca-bundle-0.pem 0444 "SYSTEM ROOTS\n# firma run: the firma CA\n-----BEGIN CERTIFICATE-----\nFIRMA\n-----END CERTIFICATE-----\n"
		bind /tmp/firma-run-1/ca-bundle-0.pem /etc/ssl/certs/ca-certificates.crt
		setattr /etc/ssl/certs/ca-certificates.crt ro=true recursive=false
		write /tmp/firma-run-1/resolv.conf 0444 "# written by firma run: DNS goes to the firma sidecar\nnameserver 127.0.0.1\nsearch corp.example\n"
		bind /tmp/firma-run-1/resolv.conf /etc/resolv.conf
		setattr /etc/resolv.conf ro=true recursive=false
		bind /tmp/firma-run-1/hidden /run/firma/control.sock
		setattr /run/firma/control.sock ro=true recursive=false
		mount tmpfs /var/lib/firma/ca mode=0000,size=4k ro=true
		bind /tmp/firma-run-1/hidden /run/docker.sock
		setattr /run/docker.sock ro=true recursive=false
		mount tmpfs /root/.ssh mode=0000,size=4k ro=true
		bind /tmp/firma-run-1/hidden /root/.netrc
		setattr /root/.netrc ro=true recursive=false
		bind /sys /sys
		setattr /sys ro=true recursive=true
		bind /proc/sys /proc/sys
		setattr /proc/sys ro=true recursive=true
		bind /proc/sysrq-trigger /proc/sysrq-trigger
		setattr /proc/sysrq-trigger ro=true recursive=true
		bind /sys/fs/cgroup/unified /sys/fs/cgroup/unified
		setattr /sys/fs/cgroup/unified ro=true recursive=true
		umount -l /tmp/firma-run-1
		chdir /work/proj
		unshare cgroup
	`)
}

func TestExecAgentTranscript(t *testing.T) {
	tr := &transcript{}
	if err := execAgent(testSpec(), &fakeChildOS{tr: tr, files: hostFiles()}); err != nil {
		t.Fatal(err)
	}
	assertTranscript(t, tr, `
		capbset keep chown,dac_override,fowner,fsetid,kill,setgid,setuid,net_bind_service,sys_chroot,audit_write
		ambient clear
		pdeathsig KILL
		capset chown,dac_override,fowner,fsetid,kill,setgid,setuid,net_bind_service,sys_chroot,audit_write
		no_new_privs
		cloexec 3-
		landlock scope abstract_unix_socket,signal
		seccomp
		exec claude code env=PATH=/usr/bin
	`)
}

// TestPrivateDevWithProfileDevices: a profile's devices are bound in as they are on the host
// (directories as directories, with their parents made), and a device the host lacks is skipped.
func TestPrivateDevWithProfileDevices(t *testing.T) {
	tr := &transcript{}
	spec := testSpec()
	spec.Devices = []string{"/dev/dri", "/dev/nvidia0", "/dev/null"}
	files := hostFiles()
	files["/dev/input/event0"] = fakeFile{}
	spec.Devices = append(spec.Devices, "/dev/input/event0")
	if err := privateDev(spec, &fakeChildOS{tr: tr, files: files}); err != nil {
		t.Fatal(err)
	}
	got := tr.String()
	for _, want := range []string{
		"mkdir /dev/dri 0755\nbind /tmp/firma-run-1/dev/dri /dev/dri\n",
		"mkdir /dev/input 0755\nwrite /dev/input/event0 0644 \"\"\nbind /tmp/firma-run-1/dev/input/event0 /dev/input/event0\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "nvidia0") || strings.Count(got, "bind /tmp/firma-run-1/dev/null /dev/null") != 1 {
		t.Errorf("missing device bound or a device bound twice:\n%s", got)
	}
}

func TestExecAgentAsUserWithoutLandlock(t *testing.T) {
	tr := &transcript{}
	spec := testSpec()
	spec.UID, spec.GID, spec.Groups, spec.Keep, spec.Landlock = 1000, 1000, []int{1000, 27}, nil, false
	if err := execAgent(spec, &fakeChildOS{tr: tr, files: hostFiles()}); err != nil {
		t.Fatal(err)
	}
	assertTranscript(t, tr, `
		capbset keep none
		ambient clear
		setuser 1000:1000 groups=[1000 27]
		pdeathsig KILL
		capset none
		no_new_privs
		cloexec 3-
		seccomp
		exec claude code env=PATH=/usr/bin
	`)
}

// TestSetupStopsAtTheFirstFailure: whatever fails, nothing after it runs — above all not exec.
func TestSetupStopsAtTheFirstFailure(t *testing.T) {
	for _, step := range []string{"mount --make-rprivate", "mount proc", "bind /etc", "setattr /work/proj", "mount tmpfs /tmp",
		"mkdir /tmp/firma-run-1/dev", "bind /dev ", "mount tmpfs /dev ", "bind /tmp/firma-run-1/dev/tty", "mount devpts",
		"mount tmpfs /dev/shm", "symlink /dev/stdin", "setattr /dev ",
		"bind /tmp/firma-run-1/ca-bundle-0.pem", "bind /tmp/firma-run-1/resolv.conf", "mount tmpfs /root/.ssh",
		"setattr /sys", "umount -l", "chdir", "unshare cgroup"} {
		tr := &transcript{}
		err := setupNamespace(testSpec(), &fakeChildOS{tr: tr, files: hostFiles(), fail: step})
		if err == nil {
			t.Errorf("failing %q: no error", step)
			continue
		}
		if last := tr.lines[len(tr.lines)-1]; !strings.HasPrefix(last, step) {
			t.Errorf("failing %q: went on to %q", step, last)
		}
	}
	for _, step := range []string{"capbset", "ambient", "pdeathsig", "capset", "no_new_privs", "cloexec", "landlock", "seccomp"} {
		tr := &transcript{}
		err := execAgent(testSpec(), &fakeChildOS{tr: tr, files: hostFiles(), fail: step})
		if err == nil {
			t.Errorf("failing %q: no error", step)
			continue
		}
		if last := tr.lines[len(tr.lines)-1]; !strings.HasPrefix(last, step) {
			t.Errorf("failing %q: went on to %q", step, last)
		}
		if strings.Contains("\n"+tr.String(), "\nexec ") {
			t.Errorf("failing %q: exec ran", step)
		}
	}
	// No system bundle at all: refuse rather than start an agent that cannot trust the sidecar.
	files := hostFiles()
	delete(files, "/etc/ssl/certs/ca-certificates.crt")
	err := setupNamespace(testSpec(), &fakeChildOS{tr: &transcript{}, files: files})
	if err == nil || !strings.Contains(err.Error(), "no system CA bundle") {
		t.Fatalf("no bundle: %v", err)
	}
}

// fakeSidecarClient is the control client seam.
type fakeSidecarClient struct {
	tr     *transcript
	info   control.Info
	reject error
}

func (f *fakeSidecarClient) Info(context.Context) (control.Info, error) {
	f.tr.add("sidecar info")
	return f.info, nil
}

func (f *fakeSidecarClient) Register(_ context.Context, r control.Registration) error {
	f.tr.add("sidecar register %s agent=%s session=%s capability=%q pid=%d", r.Cgroup, r.AgentID, r.SessionID, r.CapabilityFile, r.PID)
	return f.reject
}

func (f *fakeSidecarClient) Unregister(_ context.Context, cg string) error {
	f.tr.add("sidecar unregister %s", cg)
	return nil
}

func (f *fakeSidecarClient) Refused(_ context.Context, r control.Refusal) error {
	f.tr.add("sidecar refused pid=%d %s", r.PID, r.Syscall)
	return nil
}

func (f *fakeSidecarClient) Close() error { return nil }

// fakeCgroupFS records cgroup operations; a directory is "populated" until it was killed.
type fakeCgroupFS struct {
	tr     *transcript
	dirs   map[string]bool
	killed map[string]bool
	fail   string
}

func (f *fakeCgroupFS) do(format string, a ...any) error {
	line := fmt.Sprintf(format, a...)
	f.tr.add("%s", line)
	if f.fail != "" && strings.HasPrefix(line, f.fail) {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeCgroupFS) IsDir(dir string) error {
	if !f.dirs[dir] {
		return fs.ErrNotExist
	}
	return nil
}
func (f *fakeCgroupFS) Mkdir(dir string) error {
	if err := f.do("mkdir %s", dir); err != nil {
		return err
	}
	f.dirs[dir] = true
	return nil
}
func (f *fakeCgroupFS) Open(dir string) (int, error) { return 7, f.do("open %s", dir) }
func (f *fakeCgroupFS) Close(fd int) error           { return f.do("close %d", fd) }
func (f *fakeCgroupFS) Kill(dir string) error {
	f.killed[dir] = true
	return f.do("kill %s", dir)
}
func (f *fakeCgroupFS) Populated(dir string) (bool, error) { return !f.killed[dir], nil }
func (f *fakeCgroupFS) Rmdir(dir string) error {
	delete(f.dirs, dir)
	return f.do("rmdir %s", dir)
}

type fakeAgent struct {
	tr     *transcript
	status exitStatus
	exit   chan struct{}
	// onSignal decides whether a signal ends the agent.
	onSignal func(os.Signal) bool
}

func (a *fakeAgent) PID() int { return 4242 }
func (a *fakeAgent) Signal(sig os.Signal) error {
	a.tr.add("agent signal %v", sig)
	if a.onSignal != nil && a.onSignal(sig) {
		a.status = exitStatus{Signal: sig.(syscall.Signal)}
		close(a.exit)
	}
	return nil
}
func (a *fakeAgent) Wait() exitStatus { <-a.exit; return a.status }

type fakeHost struct {
	*host
	tr      *transcript
	sc      *fakeSidecarClient
	fs      *fakeCgroupFS
	agent   *fakeAgent
	sigs    chan os.Signal
	launchE error
	// afterLaunch runs once the fake agent has started.
	afterLaunch func()
}

func newFakeHost(t *testing.T) *fakeHost {
	tr := &transcript{}
	fh := &fakeHost{
		tr: tr,
		sc: &fakeSidecarClient{tr: tr, info: control.Info{
			Cgroup: "/firma-agents.slice", CACertPEM: "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
			DNS: "127.0.0.1:15053", Hide: []string{"/var/lib/firma/ca"},
		}},
		fs:   &fakeCgroupFS{tr: tr, dirs: map[string]bool{"/sys/fs/cgroup/unified/firma-agents.slice": true}, killed: map[string]bool{}},
		sigs: make(chan os.Signal, 4),
	}
	fh.agent = &fakeAgent{tr: tr, exit: make(chan struct{})}
	fh.host = &host{
		dial: func(_ context.Context, socket string) (sidecar, error) {
			tr.add("dial %s", socket)
			return fh.sc, nil
		},
		mountinfo: func() ([]cgroup.Mount, error) { return cgroup.ParseMountinfo(strings.NewReader(hybridMountinfo)) },
		fs:        fh.fs,
		launch: func(l launch) (agent, error) {
			tr.add("launch fd=%d argv=%s uid=%d workspace=%s landlock=%v", l.CgroupFD, strings.Join(l.Spec.Argv, " "), l.Spec.UID, l.Spec.Workspace, l.Spec.Landlock)
			if fh.launchE != nil {
				return nil, fh.launchE
			}
			if fh.afterLaunch != nil {
				fh.afterLaunch()
			}
			return fh.agent, nil
		},
		notify:       func() (<-chan os.Signal, func()) { return fh.sigs, func() {} },
		fromTerminal: func(os.Signal) bool { return false },
		lookupUser: func(spec string) (agentUser, error) {
			return agentUser{UID: 1000, GID: 1000, Groups: []int{1000}, Name: spec, Home: "/home/" + spec}, nil
		},
		homes:       func(u *agentUser) []string { return []string{"/root"} },
		exists:      func(p string) bool { return p == "/etc/ssl/certs/ca-certificates.crt" },
		mkdirTemp:   func() (string, error) { tr.add("mkdtemp /tmp/firma-run-1"); return "/tmp/firma-run-1", nil },
		removeAll:   func(p string) error { tr.add("rm %s", p); return nil },
		getwd:       func() (string, error) { return "/work/proj", nil },
		pid:         99,
		suffix:      func() string { return "abcd" },
		landlockABI: func() int { return 7 },
	}
	return fh
}

func (fh *fakeHost) run(t *testing.T, cfg Config, opts Options) (int, error) {
	t.Helper()
	return fh.host.run(context.Background(), cfg, opts, zerolog.Nop())
}

func TestRunTranscript(t *testing.T) {
	fh := newFakeHost(t)
	fh.agent.status = exitStatus{Code: 3}
	close(fh.agent.exit)
	code, err := fh.run(t, DefaultConfig(), Options{Profile: "codex", Command: []string{"claude", "code"}, Env: []string{}})
	if err != nil || code != 3 {
		t.Fatalf("run = %d, %v", code, err)
	}
	// Registration is after the cgroup exists and before the agent starts; cleanup runs newest first.
	assertTranscript(t, fh.tr, `
		dial /run/firma/control.sock
		sidecar info
		mkdir /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
		open /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
		sidecar register /firma-agents.slice/firma-run-99-abcd agent=codex session=`+sessionOf(fh.tr)+` capability="" pid=99
		mkdtemp /tmp/firma-run-1
		launch fd=7 argv=claude code uid=-1 workspace=/work/proj landlock=true
		rm /tmp/firma-run-1
		dial /run/firma/control.sock
		sidecar unregister /firma-agents.slice/firma-run-99-abcd
		close 7
		kill /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
		rmdir /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
	`)
}

func sessionOf(tr *transcript) string {
	for _, l := range tr.lines {
		if _, rest, ok := strings.Cut(l, " session="); ok {
			return strings.Fields(rest)[0]
		}
	}
	return "?"
}

// TestRunRollsBack: when a step fails, what was done before it is undone and the agent never runs.
func TestRunRollsBack(t *testing.T) {
	t.Run("registration refused", func(t *testing.T) {
		fh := newFakeHost(t)
		fh.sc.reject = &control.RemoteError{Message: "capability /c.toml: token expired"}
		_, err := fh.run(t, DefaultConfig(), Options{Command: []string{"true"}})
		if err == nil || !strings.Contains(err.Error(), "capability /c.toml: token expired") {
			t.Fatalf("err = %v", err)
		}
		assertTranscript(t, fh.tr, `
			dial /run/firma/control.sock
			sidecar info
			mkdir /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
			open /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
			sidecar register /firma-agents.slice/firma-run-99-abcd agent=generic session=`+sessionOf(fh.tr)+` capability="" pid=99
			close 7
			kill /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
			rmdir /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd
		`)
	})
	t.Run("init step fails", func(t *testing.T) {
		fh := newFakeHost(t)
		fh.launchE = fmt.Errorf("%w: binding CA bundle: permission denied", ErrSetup)
		_, err := fh.run(t, DefaultConfig(), Options{Command: []string{"true"}})
		if !errors.Is(err, ErrSetup) {
			t.Fatalf("err = %v", err)
		}
		tail := fh.tr.lines[len(fh.tr.lines)-6:]
		want := []string{"rm /tmp/firma-run-1", "dial /run/firma/control.sock", "sidecar unregister /firma-agents.slice/firma-run-99-abcd",
			"close 7", "kill /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd", "rmdir /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd"}
		if strings.Join(tail, "\n") != strings.Join(want, "\n") {
			t.Fatalf("cleanup:\n%s", fh.tr)
		}
	})
	t.Run("open fails", func(t *testing.T) {
		fh := newFakeHost(t)
		fh.fs.fail = "open"
		if _, err := fh.run(t, DefaultConfig(), Options{Command: []string{"true"}}); err == nil {
			t.Fatal("no error")
		}
		if last := fh.tr.lines[len(fh.tr.lines)-1]; !strings.HasPrefix(last, "rmdir ") || strings.Contains(fh.tr.String(), "register") {
			t.Fatalf("transcript:\n%s", fh.tr)
		}
	})
	t.Run("signal before the agent starts", func(t *testing.T) {
		fh := newFakeHost(t)
		fh.sigs <- syscall.SIGTERM
		code, err := fh.run(t, DefaultConfig(), Options{Command: []string{"true"}})
		if err == nil || code != 143 || strings.Contains(fh.tr.String(), "launch") {
			t.Fatalf("code %d, err %v, transcript:\n%s", code, err, fh.tr)
		}
	})
}

// TestRunRefusesUnenforcedPlacement: nothing is created when the parent is not enforced.
func TestRunRefusesUnenforcedPlacement(t *testing.T) {
	for name, tc := range map[string]struct {
		info   string
		cgroup string
		want   string
	}{
		"no enforced cgroup":          {"", "", "reports no enforced cgroup"},
		"--cgroup outside the parent": {"/firma.slice/firma-agents.slice", "/user.slice", "outside the sidecar's enforced parent"},
		"--cgroup sibling prefix":     {"/firma.slice/firma-agents.slice", "/firma.slice/firma-agents.slice-x", "outside"},
		"--cgroup unnested slice":     {"/firma.slice/firma-agents.slice", "/firma-agents.slice-x.slice", "outside"},
		"parent missing":              {"/firma.slice/firma-agents.slice", "firma-agents.slice/missing", "does not exist"},
	} {
		t.Run(name, func(t *testing.T) {
			fh := newFakeHost(t)
			fh.sc.info.Cgroup = tc.info
			_, err := fh.run(t, DefaultConfig(), Options{Cgroup: tc.cgroup, Command: []string{"true"}})
			if !errors.Is(err, ErrNotEnforced) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v", err)
			}
			if strings.Contains(fh.tr.String(), "mkdir") {
				t.Fatalf("created a cgroup:\n%s", fh.tr)
			}
		})
	}
}

func TestRunForwardsSignalsAndKillsAfterTimeout(t *testing.T) {
	fh := newFakeHost(t)
	fh.agent.onSignal = func(os.Signal) bool { return false } // ignores everything
	killed := make(chan struct{})
	fs := fh.fs
	fh.host.fs = killNotifier{fs, killed, fh.agent}
	fh.afterLaunch = func() {
		fh.sigs <- syscall.SIGHUP
		fh.sigs <- syscall.SIGTERM
	}
	cfg := DefaultConfig()
	cfg.StopTimeoutSeconds = 0
	code, err := fh.run(t, cfg, Options{Command: []string{"sleep", "100"}})
	if err != nil || code != 137 {
		t.Fatalf("code %d, err %v", code, err)
	}
	got := fh.tr.String()
	for _, want := range []string{"agent signal hangup", "agent signal terminated", "kill /sys/fs/cgroup/unified/firma-agents.slice/firma-run-99-abcd"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
}

// killNotifier ends the fake agent with SIGKILL when its cgroup is killed, like the kernel would.
type killNotifier struct {
	*fakeCgroupFS
	killed chan struct{}
	a      *fakeAgent
}

func (k killNotifier) Kill(dir string) error {
	err := k.fakeCgroupFS.Kill(dir)
	select {
	case <-k.killed:
	default:
		close(k.killed)
		k.a.status = exitStatus{Signal: syscall.SIGKILL}
		close(k.a.exit)
	}
	return err
}

func TestBuildSpec(t *testing.T) {
	cfg := DefaultConfig()
	_, codex, _ := cfg.profile("codex")
	spec, err := buildSpec(specInput{
		Command: []string{"codex"}, Env: []string{"PATH=/bin", "HTTPS_PROXY=x", "OPENAI_API_KEY=sk"},
		Dir: "/home/alice/proj", Profile: codex,
		Info: control.Info{CACertPEM: "-----BEGIN CERTIFICATE-----\nX\n", DNS: "[::1]:15053",
			Hide: []string{"/var/lib/firma/ca", "/var/log/firma/audit.jsonl"}},
		Socket: "/run/firma/control.sock",
		User:   &agentUser{UID: 1000, GID: 1000, Groups: []int{1000}, Name: "alice", Home: "/home/alice"},
		Homes:  []string{"/home/alice", "/root"}, CgroupMounts: []string{"/sys/fs/cgroup/unified"},
		Exists: func(p string) bool { return p == "/etc/pki/tls/certs/ca-bundle.crt" },
	})
	if err != nil {
		t.Fatal(err)
	}
	if spec.UID != 1000 || len(spec.Keep) != 0 || spec.Workspace != "/home/alice/proj" || spec.Nameserver != "::1" {
		t.Fatalf("spec %+v", spec)
	}
	env := strings.Join(spec.Env, " ")
	for _, want := range []string{"PATH=/bin", "HOME=/home/alice", "USER=alice", "SSL_CERT_FILE=/etc/pki/tls/certs/ca-bundle.crt", "NODE_EXTRA_CA_CERTS=/etc/pki/tls/certs/ca-bundle.crt"} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %s: %s", want, env)
		}
	}
	if strings.Contains(env, "PROXY") || strings.Contains(env, "OPENAI_API_KEY") {
		t.Errorf("env keeps what it must not: %s", env)
	}
	hide := strings.Join(spec.Hide, " ")
	for _, want := range []string{"/run/firma/control.sock", "/var/lib/firma/ca", "/var/log/firma/audit.jsonl", "/run/docker.sock",
		"/run/dbus/system_bus_socket", "/run/user", "/run/nscd/socket", "/run/avahi-daemon/socket", "/home/alice/.ssh", "/root/.ssh", "/home/alice/.aws", "/root/.git-credentials"} {
		if !strings.Contains(" "+hide+" ", " "+want+" ") {
			t.Errorf("hide lacks %s", want)
		}
	}
	if strings.Join(spec.Protect, " ") != "/sys /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus /proc/fs /sys/fs/cgroup/unified" {
		t.Errorf("protect %v", spec.Protect)
	}

	if _, err := buildSpec(specInput{Command: []string{"x"}, Info: control.Info{Hide: []string{"audit.jsonl"}}, Exists: func(string) bool { return true }}); err == nil {
		t.Error("relative hide path accepted")
	}
	if _, err := buildSpec(specInput{Command: []string{"x"}, Info: control.Info{CACertPEM: "not pem"}, Exists: func(string) bool { return true }}); err == nil {
		t.Error("non-PEM CA accepted")
	}
	if _, err := buildSpec(specInput{Command: []string{"x"}, Info: control.Info{CACertPEM: "-----BEGIN CERTIFICATE-----\n"}, Exists: func(string) bool { return false }}); err == nil {
		t.Error("no system bundle accepted")
	}
}

func TestTerminalSignalsAreNotSentTwice(t *testing.T) {
	fh := newFakeHost(t)
	fh.host.fromTerminal = func(sig os.Signal) bool { return sig == syscall.SIGINT }
	fh.agent.onSignal = func(os.Signal) bool { return true }
	fh.afterLaunch = func() {
		fh.sigs <- syscall.SIGINT  // the kernel gave it to the agent already
		fh.sigs <- syscall.SIGTERM // from kill(1): forwarded
	}
	code, err := fh.run(t, DefaultConfig(), Options{Command: []string{"true"}})
	if err != nil || code != 143 {
		t.Fatalf("code %d, err %v", code, err)
	}
	if got := fh.tr.String(); strings.Contains(got, "agent signal interrupt") || !strings.Contains(got, "agent signal terminated") {
		t.Fatalf("transcript:\n%s", got)
	}
}

type fakeSystemd struct {
	tr   *transcript
	fail string
}

func (f *fakeSystemd) do(format string, a ...any) error {
	line := fmt.Sprintf(format, a...)
	f.tr.add("%s", line)
	if f.fail != "" && strings.HasPrefix(line, f.fail) {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeSystemd) StartScope(_ context.Context, unit, slice, desc string, pid int) error {
	return f.do("systemd start %s slice=%s pids=%d description=%q", unit, slice, pid, desc)
}
func (f *fakeSystemd) StopUnit(_ context.Context, unit string) error {
	return f.do("systemd stop %s", unit)
}
func (f *fakeSystemd) Close() { f.tr.add("systemd close") }

type fakePlaceholder struct{ tr *transcript }

func (p fakePlaceholder) PID() int { return 555 }
func (p fakePlaceholder) Release() { p.tr.add("placeholder release") }

func systemdHost(t *testing.T, sd *fakeSystemd) *fakeHost {
	fh := newFakeHost(t)
	sd.tr = fh.tr
	fh.sc.info.Cgroup = "/firma.slice/firma-agents.slice"
	fh.fs.dirs = map[string]bool{"/sys/fs/cgroup/unified/firma.slice/firma-agents.slice": true,
		"/sys/fs/cgroup/unified/firma.slice/firma-agents.slice/firma-run-99-abcd.scope": true}
	fh.host.systemd = func(_ context.Context, mount, desc string) (placer, error) {
		return systemdPlacer{conn: sd, fs: fh.fs, mount: mount, desc: desc, hold: func() (placeholder, error) {
			fh.tr.add("placeholder start")
			return fakePlaceholder{fh.tr}, nil
		}}, nil
	}
	fh.agent.status = exitStatus{Code: 0}
	close(fh.agent.exit)
	return fh
}

func TestRunInSystemdScope(t *testing.T) {
	fh := systemdHost(t, &fakeSystemd{})
	if code, err := fh.run(t, DefaultConfig(), Options{Command: []string{"claude"}}); err != nil || code != 0 {
		t.Fatalf("code %d, err %v", code, err)
	}
	// The placeholder holds the scope until the agent is cloned into it; the agent is never moved.
	assertTranscript(t, fh.tr, `
		dial /run/firma/control.sock
		sidecar info
		placeholder start
		systemd start firma-run-99-abcd.scope slice=firma-agents.slice pids=555 description="firma run: claude"
		open /sys/fs/cgroup/unified/firma.slice/firma-agents.slice/firma-run-99-abcd.scope
		sidecar register /firma.slice/firma-agents.slice/firma-run-99-abcd.scope agent=generic session=`+sessionOf(fh.tr)+` capability="" pid=99
		mkdtemp /tmp/firma-run-1
		launch fd=7 argv=claude uid=-1 workspace= landlock=true
		placeholder release
		rm /tmp/firma-run-1
		dial /run/firma/control.sock
		sidecar unregister /firma.slice/firma-agents.slice/firma-run-99-abcd.scope
		close 7
		placeholder release
		systemd stop firma-run-99-abcd.scope
		kill /sys/fs/cgroup/unified/firma.slice/firma-agents.slice/firma-run-99-abcd.scope
		rmdir /sys/fs/cgroup/unified/firma.slice/firma-agents.slice/firma-run-99-abcd.scope
		systemd close
	`)
}

func TestRunFallsBackFromSystemd(t *testing.T) {
	fh := systemdHost(t, &fakeSystemd{fail: "systemd start"})
	if code, err := fh.run(t, DefaultConfig(), Options{Command: []string{"claude"}}); err != nil || code != 0 {
		t.Fatalf("code %d, err %v", code, err)
	}
	got := fh.tr.String()
	want := "systemd start firma-run-99-abcd.scope slice=firma-agents.slice pids=555 description=\"firma run: claude\"\n" +
		"placeholder release\nsystemd close\nmkdir /sys/fs/cgroup/unified/firma.slice/firma-agents.slice/firma-run-99-abcd\n"
	if !strings.Contains(got, want) {
		t.Fatalf("no clean fallback to cgroupfs:\n%s", got)
	}

	// A parent that is not a slice's cgroup never asks systemd.
	fh = systemdHost(t, &fakeSystemd{})
	fh.sc.info.Cgroup = "/firma-agents.slice"
	fh.fs.dirs["/sys/fs/cgroup/unified/firma-agents.slice"] = true
	if _, err := fh.run(t, DefaultConfig(), Options{Command: []string{"claude"}}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(fh.tr.String(), "systemd") {
		t.Fatalf("systemd asked for a non-slice parent:\n%s", fh.tr)
	}
}

// TestRunWithoutLandlockScopes: on a kernel whose Landlock has no scopes the agent still runs
// (PID namespace and seccomp stand), and firma run says what is missing.
func TestRunWithoutLandlockScopes(t *testing.T) {
	fh := newFakeHost(t)
	fh.host.landlockABI = func() int { return 5 }
	fh.agent.status = exitStatus{Code: 0}
	close(fh.agent.exit)
	var logs strings.Builder
	code, err := fh.host.run(context.Background(), DefaultConfig(), Options{Command: []string{"true"}}, zerolog.New(&logs))
	if err != nil || code != 0 {
		t.Fatalf("run = %d, %v", code, err)
	}
	if !strings.Contains(fh.tr.String(), "landlock=false") {
		t.Errorf("landlock requested without scopes:\n%s", fh.tr)
	}
	if !strings.Contains(logs.String(), `"landlock_abi":5`) || !strings.Contains(logs.String(), "abstract unix sockets") {
		t.Errorf("no warning naming the Landlock ABI and what is missing: %s", logs.String())
	}
}

// capNames names capabilities in transcripts.
var capNames = map[int]string{
	capChown: "chown", capDacOverride: "dac_override", capDacReadSearch: "dac_read_search",
	capFowner: "fowner", capFsetid: "fsetid", capKill: "kill", capSetgid: "setgid", capSetuid: "setuid",
	capSetpcap: "setpcap", capNetBindService: "net_bind_service", capNetAdmin: "net_admin",
	capNetRaw: "net_raw", capSysModule: "sys_module", capSysRawio: "sys_rawio",
	capSysChroot: "sys_chroot", capSysPtrace: "sys_ptrace", capSysAdmin: "sys_admin",
	capMknod: "mknod", capAuditWrite: "audit_write", capPerfmon: "perfmon", capBPF: "bpf",
}

func capList(caps []int) string {
	if len(caps) == 0 {
		return "none"
	}
	names := make([]string, len(caps))
	for i, c := range caps {
		names[i] = capNames[c]
	}
	return strings.Join(names, ",")
}
