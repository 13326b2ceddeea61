//go:build linux

package docs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/testutil"
)

// The user who follows the guides inside a machine: not root, so that a step that only works as
// root fails here as it would for a reader. `sudo` (internal/e2e/cmd/sudo, installed setuid root)
// is how the guides' commands become root.
const (
	userName = "alice"
	userID   = 4242
	userHome = "/tmp/home"
	repoDir  = "/tmp/firma" // the clone, where every document's first command runs
	stateDir = "/tmp/.machine"
)

// machine is a throwaway host for one document: a process holding fresh network, mount and cgroup
// namespaces, in which the document's commands run as they would on a host of their own. Its
// private mounts are /tmp and /run (tmpfs), /sys/fs/bpf (a bpffs of its own), the cgroup2 mount
// (rooted at a cgroup the test made), and overlays on /etc and /usr/local (so `make install` and a
// user in /etc/passwd change nothing outside). Its network is a loopback of its own: the default
// ports (15001, 8080, [::1]:50051…) and pin dir the guides use collide with nothing, and nothing
// can leave.
type machine struct {
	t      *testing.T
	pid    int
	cg     *testutil.Cgroup
	shell  int // cgroup fd: every command starts in the machine's /shell cgroup
	netns  *testutil.NetNS
	env    []string
	terms  map[string]*terminal
	holder *exec.Cmd
}

// holderScript sets the machine up and then holds its namespaces. $1 is the cgroup2 mount point.
const holderScript = `set -eu
cg=$1
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p ` + stateDir + `/etc.upper ` + stateDir + `/etc.work ` + stateDir + `/local.upper ` + stateDir + `/local.work
mount -t overlay overlay -o lowerdir=/etc,upperdir=` + stateDir + `/etc.upper,workdir=` + stateDir + `/etc.work /etc
mount -t overlay overlay -o lowerdir=/usr/local,upperdir=` + stateDir + `/local.upper,workdir=` + stateDir + `/local.work /usr/local
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
umount -l "$cg"
mount -t cgroup2 cgroup2 "$cg"
mkdir "$cg/holder"
echo $$ > "$cg/holder/cgroup.procs"
ip link set lo up
echo "` + userName + `:x:` + "4242:4242:firma docs reader:" + userHome + `:/bin/bash" >> /etc/passwd
echo "` + userName + `:x:4242:" >> /etc/group
mkdir -m 0700 ` + userHome + `
chown 4242:4242 ` + userHome + `
echo machine ready
exec sleep infinity
`

// newMachine starts a machine; everything it holds goes when the test ends.
func newMachine(t *testing.T) *machine {
	t.Helper()
	testutil.RequireRoot(t)
	for _, tool := range []string{"unshare", "nsenter", "setpriv", "ip", "git"} {
		testutil.RequireTool(t, tool)
	}
	mnt, err := cgroup.FindV2Mount()
	if err != nil {
		t.Fatal(err)
	}
	m := &machine{t: t, cg: testutil.NewCgroup(t, nil), terms: map[string]*terminal{}}
	if err := os.Mkdir(filepath.Join(m.cg.Path, "shell"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.shell = openDir(t, filepath.Join(m.cg.Path, "shell"))
	rootFD := openDir(t, m.cg.Path)

	m.holder = exec.Command("unshare", "--cgroup", "--mount", "--net", "--propagation", "private",
		"sh", "-c", holderScript, "sh", mnt)
	m.holder.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: rootFD}
	out, err := m.holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	m.holder.Stderr = &stderr
	if err := m.holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.close)
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "machine ready\n" {
		m.holder.Wait()
		t.Fatalf("machine setup failed: %q\n%s", line, stderr.String())
	}
	m.pid = m.holder.Process.Pid
	m.netns = &testutil.NetNS{Name: "machine-" + strconv.Itoa(m.pid), Path: fmt.Sprintf("/proc/%d/ns/net", m.pid)}
	m.env = []string{
		"HOME=" + userHome, "USER=" + userName, "LOGNAME=" + userName, "SHELL=/bin/bash",
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/go/bin", "TERM=dumb", "LANG=C.UTF-8",
	}
	return m
}

func openDir(t *testing.T, path string) int {
	t.Helper()
	fd, err := syscall.Open(path, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fd
}

// close stops every terminal, then the holder: the namespaces, the tmpfs and the bpffs (with the
// programs pinned there) go with it. The cgroup goes in testutil's own cleanup.
func (m *machine) close() {
	for _, term := range m.terms {
		term.stop(m.t)
	}
	if m.holder.Process != nil {
		m.holder.Process.Kill()
		m.holder.Wait()
	}
}

// path is where a file inside the machine is, seen from the test.
func (m *machine) path(p string) string { return fmt.Sprintf("/proc/%d/root%s", m.pid, p) }

// writeFile writes a file inside the machine, owned by root.
func (m *machine) writeFile(p string, data []byte, mode os.FileMode) {
	m.t.Helper()
	if err := os.MkdirAll(filepath.Dir(m.path(p)), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(m.path(p), data, mode); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Chmod(m.path(p), mode); err != nil {
		m.t.Fatal(err)
	}
}

// command prepares a shell script to run in the machine, in its /shell cgroup, as the user (or as
// root), in a process group of its own.
func (m *machine) command(ctx context.Context, asRoot bool, script string) *exec.Cmd {
	args := []string{"-t", strconv.Itoa(m.pid), "--mount", "--net", "--cgroup", "--"}
	env := m.env
	if !asRoot {
		args = append(args, "setpriv", "--reuid="+strconv.Itoa(userID), "--regid="+strconv.Itoa(userID), "--clear-groups", "--")
	} else {
		env = []string{"HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin", "LANG=C.UTF-8"}
	}
	cmd := exec.CommandContext(ctx, "nsenter", append(args, "bash", "-c", script)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: m.shell, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = env
	cmd.Dir = "/"
	return cmd
}

// root runs a script as root inside the machine (test plumbing, not a document's command) and
// returns its output, failing the test on error.
func (m *machine) root(script string) string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := m.command(ctx, true, script).CombinedOutput()
	if err != nil {
		m.t.Fatalf("in the machine: %s: %v\n%s", script, err, out)
	}
	return string(out)
}

// The guide's shell: what carries over from one block to the next, as in a terminal a reader keeps
// open: exported variables and the working directory.
const (
	sessionEnv = stateDir + "/session/env"
	sessionCwd = stateDir + "/session/cwd"
)

// startSession makes the reader's shell start in dir.
func (m *machine) startSession(dir string) {
	m.t.Helper()
	m.root(fmt.Sprintf("mkdir -p %[1]s/session && echo %[2]q > %[3]s && : > %[4]s && chown -R %[5]d:%[5]d %[1]s/session",
		stateDir, dir, sessionCwd, sessionEnv, userID))
}

// shellScript wraps a block's text: it runs in the session's directory with its exported
// variables, stops at the first failing command (a reader would), and saves the session for the
// next block.
func shellScript(text string, save bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "source %s\ncd \"$(cat %s)\"\n", sessionEnv, sessionCwd)
	if save {
		fmt.Fprintf(&b, "trap 'export -p | grep -vE \"^declare -x (PWD|OLDPWD|SHLVL|_)=\" > %s; pwd > %s' EXIT\n", sessionEnv, sessionCwd)
	}
	b.WriteString("set -e -o pipefail\n")
	b.WriteString(text)
	b.WriteString("\n")
	return b.String()
}

// run runs one foreground block in the reader's shell and returns its output; a block that fails
// or takes longer than timeout fails the test.
func (m *machine) run(b block, timeout time.Duration) string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	cmd := m.command(ctx, false, shellScript(b.text, true))
	out, err := cmd.CombinedOutput()
	m.t.Logf("%s (%.1fs):\n$ %s\n%s", b, time.Since(start).Seconds(), indent(b.text), out)
	if err != nil {
		m.t.Fatalf("%s: %v (a command of the block failed, as it would for a reader)\n%s%s", b, err, out, m.terminalLogs())
	}
	return string(out)
}

// terminal is a command a document runs in a terminal of its own (a sidecar, an authority).
type terminal struct {
	name string
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
}

// start runs a terminal block in the background, after stopping what ran in that terminal before
// (the guides' "restart the sidecar"), and waits until its output shows the block's ready text.
func (m *machine) start(b block) *terminal {
	m.t.Helper()
	name := b.attrs["terminal"]
	if old := m.terms[name]; old != nil {
		old.stop(m.t)
	}
	term := &terminal{name: name, out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	term.cmd = m.command(context.Background(), false, shellScript(b.text, false))
	term.cmd.Stdout, term.cmd.Stderr = term.out, term.out
	if err := term.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.terms[name] = term
	go func() {
		term.cmd.Wait()
		close(term.done)
	}()
	m.t.Logf("%s: terminal %q:\n$ %s", b, name, indent(b.text))
	deadline := time.After(90 * time.Second)
	for !strings.Contains(term.out.String(), b.attrs["ready"]) {
		select {
		case <-term.done:
			m.t.Fatalf("%s: terminal %q exited (%v) before %q:\n%s", b, name, term.cmd.ProcessState, b.attrs["ready"], term.out.String())
		case <-deadline:
			m.t.Fatalf("%s: terminal %q shows no %q after 90s:\n%s", b, name, b.attrs["ready"], term.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return term
}

// stop is Ctrl-C in the terminal: SIGINT to its process group, then SIGKILL if it lingers.
func (term *terminal) stop(t *testing.T) {
	select {
	case <-term.done:
		return
	default:
	}
	syscall.Kill(-term.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-term.done:
	case <-time.After(15 * time.Second):
		syscall.Kill(-term.cmd.Process.Pid, syscall.SIGKILL)
		<-term.done
		t.Errorf("terminal %q did not stop on Ctrl-C:\n%s", term.name, term.out.String())
	}
}

// terminalLogs is every terminal's output, for failure messages.
func (m *machine) terminalLogs() string {
	var b strings.Builder
	for name, term := range m.terms {
		fmt.Fprintf(&b, "\n--- terminal %q:\n%s", name, term.out.String())
	}
	return b.String()
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n  ") }

// cloneInto clones the repository into the machine at repoDir, owned by the reader: `git clone`
// of this checkout, then the working tree's uncommitted changes on top, so that the test checks
// what is on disk. Nothing beside the clone is there: the repository must stand on its own.
func (m *machine) cloneInto(src string) {
	m.t.Helper()
	// The machine mounts its own /tmp and /run over the host's, where CI may have cloned the
	// repository: clone it first to /var/tmp, which the machine shares, and clone that inside.
	via, err := os.MkdirTemp("/var/tmp", "firma-docs-src-")
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { os.RemoveAll(via) })
	if out, err := exec.Command("git", "clone", "--quiet", "--no-hardlinks", src, via).CombinedOutput(); err != nil {
		m.t.Fatalf("git clone %s: %v\n%s", src, err, out)
	}
	m.root(fmt.Sprintf("git clone --quiet --no-hardlinks %q %s", via, repoDir))
	dst := m.path(repoDir)
	list, err := exec.Command("git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		m.t.Fatalf("git ls-files: %v", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		if f == "" {
			continue
		}
		if err := copyFile(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
			m.t.Fatal(err)
		}
	}
	m.root(fmt.Sprintf("chown -R %d:%d %s", userID, userID, repoDir))
}

// copyFile copies src over dst when they differ, and removes dst when src is gone.
func copyFile(src, dst string) error {
	st, err := os.Lstat(src)
	if os.IsNotExist(err) {
		return os.RemoveAll(dst)
	}
	if err != nil || !st.Mode().IsRegular() {
		return err
	}
	in, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(dst); err == nil && string(cur) == string(in) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, in, st.Mode().Perm())
}

// install puts a program in the machine's /usr/local/bin (its private overlay), mode and owner
// as `make install` leaves them.
func (m *machine) install(name, src string, setuid bool) {
	m.t.Helper()
	in, err := os.Open(src)
	if err != nil {
		m.t.Fatal(err)
	}
	defer in.Close()
	dst := m.path("/usr/local/bin/" + name)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		m.t.Fatal(err)
	}
	out.Close()
	mode := os.FileMode(0o755)
	if setuid {
		mode |= os.ModeSetuid
	}
	if err := os.Chmod(dst, mode); err != nil {
		m.t.Fatal(err)
	}
}
