package runner_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
)

// escapeReport is what internal/e2e/cmd/sandboxescape prints.
type escapeReport struct {
	PID          int      `json:"pid"`
	PPID         int      `json:"ppid"`
	InitComm     string   `json:"init_comm"`
	FDs          []string `json:"fds"`
	Procs        []int    `json:"procs"`
	BlockDevices []string `json:"block_devices"`
	PTYs         []string `json:"ptys"`
	Probes       map[string]struct {
		OK     bool   `json:"ok"`
		Err    string `json:"err"`
		Detail string `json:"detail"`
	} `json:"probes"`
}

// sandboxRefuses is what every attempt of the escape program must get inside firma run, as root
// and as another user alike: the errno, or "" where the call must work.
func sandboxRefuses() map[string]string {
	want := map[string]string{
		// Socket families the cgroup hooks do not see: the seccomp filter.
		"socket-netlink": "EAFNOSUPPORT", "socket-packet": "EAFNOSUPPORT", "socket-vsock": "EAFNOSUPPORT",
		"socket-alg": "EAFNOSUPPORT", "socket-xdp": "EAFNOSUPPORT", "socket-key": "EAFNOSUPPORT",
		"socket-tipc": "EAFNOSUPPORT", "socketpair-netlink": "EAFNOSUPPORT",
		// ...while what agents use keeps working.
		"socket-unix": "", "socket-inet": "", "socket-inet6": "", "socketpair-unix": "",
		// Reaching into processes, even a child of its own: the seccomp filter.
		"ptrace-child": "EPERM", "pidfd-getfd-child": "EPERM", "ptrace-init": "EPERM",
		"process_vm_readv": "EPERM", "process_vm_writev": "EPERM", "kcmp": "EPERM", "process_madvise": "EPERM",
		// The kernel's own interfaces: the seccomp filter.
		"bpf": "EPERM", "perf_event_open": "EPERM", "io_uring_setup": "EPERM", "userfaultfd": "EPERM",
		"add_key": "EPERM", "keyctl": "EPERM", "syslog": "EPERM", "delete_module": "EPERM", "setns": "EPERM",
		"open_by_handle_at": "EPERM", "kexec_load": "EPERM", "init_module": "EPERM", "finit_module": "EPERM",
		"request_key": "EPERM", "acct": "EPERM", "swapoff": "EPERM",
		// Processes outside the sandbox do not exist for it: the PID namespace (ptrace is refused
		// before the kernel looks the pid up).
		"signal-outside": "ESRCH", "pidfd-open-outside": "ESRCH", "ptrace-outside": "EPERM",
		// Its own init is in the namespace but outside its Landlock domain.
		"signal-init": "EPERM",
		// Abstract unix sockets outside the sandbox: Landlock.
		"abstract-unix-connect": "EPERM",
		// Nothing inherited: close-on-exec before exec.
		"inherited-inet-socket": "EBADF",
	}
	if runtime.GOARCH == "amd64" {
		// The i386 entry, with its own numbering: ENOSYS for every call.
		want["int80-getpid"], want["int80-socket-netlink"] = "ENOSYS", "ENOSYS"
		want["iopl"], want["ioperm"] = "EPERM", "EPERM"
	}
	return want
}

// workOutside are attempts that an unprivileged process outside firma run gets through on any
// kernel firma supports: the control that shows each probe is real.
var workOutside = []string{"inherited-inet-socket", "socket-netlink", "ptrace-child", "pidfd-getfd-child",
	"process_vm_readv", "process_vm_writev", "kcmp", "add_key", "userfaultfd", "abstract-unix-connect"}

// escapeTargets are what the escape program tries to reach: a TCP listener the test owns on
// loopback, whose connected socket is handed to firma run without close-on-exec (as a shell could),
// and an abstract unix socket listener.
type escapeTargets struct {
	outsidePID int // a process outside the sandbox (a sleep of the test's: tracing it may stop it)
	inherited  *os.File
	tcp        *byteSink
	abstract   string
	unix       *byteSink
}

func newEscapeTargets(t *testing.T) *escapeTargets {
	t.Helper()
	tcp := newByteSink(t, "tcp", "127.0.0.1:0")
	conn, err := net.Dial("tcp", tcp.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f, err := conn.(*net.TCPConn).File()
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	name := fmt.Sprintf("firma-escape-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	return &escapeTargets{outsidePID: sleep.Process.Pid, inherited: f, tcp: tcp, abstract: name, unix: newByteSink(t, "unix", "@"+name)}
}

// received closes the test's own copy of the inherited socket and returns what both listeners got.
func (e *escapeTargets) received(t *testing.T) (tcp, unix string) {
	t.Helper()
	e.inherited.Close()
	return e.tcp.wait(t), e.unix.wait(t)
}

// byteSink accepts connections and keeps every byte they carry.
type byteSink struct {
	ln   net.Listener
	mu   sync.Mutex
	got  bytes.Buffer
	open int // accepted connections not yet ended
}

func newByteSink(t *testing.T, network, addr string) *byteSink {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &byteSink{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open++
			s.mu.Unlock()
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				s.mu.Lock()
				s.got.Write(b)
				s.open--
				s.mu.Unlock()
			}()
		}
	}()
	return s
}

// wait returns what arrived once every accepted connection has ended (the peers are gone).
func (s *byteSink) wait(t *testing.T) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		open, got := s.open, s.got.String()
		s.mu.Unlock()
		if open == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatal("a connection to the test listener is still open after the agent ended")
		}
	}
}

// runEscape runs the escape program, inside firma run (args are firma run's flags) or, with
// inside false, directly as the control.
func runEscape(t *testing.T, f *fakeSidecar, e *escapeTargets, inside bool, user string) escapeReport {
	t.Helper()
	args := []string{escapeBin, "-abstract", e.abstract, "-outside-pid", fmt.Sprint(e.outsidePID)}
	var cmd *exec.Cmd
	if inside {
		flags := []string{"--"}
		if user != "" {
			flags = []string{"--user", user, "--"}
		}
		cmd = f.command(t, "/", nil, append(flags, args...)...)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		t.Cleanup(cancel)
		cmd = exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = testutil.CleanEnv()
		if user != "" {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
	}
	cmd.ExtraFiles = []*os.File{e.inherited} // fd 3, without close-on-exec
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("escape (inside=%v user=%q): %v\nstderr:\n%s", inside, user, err, stderr.String())
	}
	var r escapeReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("escape output %q: %v\nstderr:\n%s", stdout.String(), err, stderr.String())
	}
	return r
}

// TestRunSandbox runs the escape program inside firma run, as root and as nobody, and checks every
// attempt against what the sandbox must refuse; the same program run outside firma run (the
// control) shows that the attempts are real.
func TestRunSandbox(t *testing.T) {
	f := newFakeSidecar(t)
	for _, user := range []string{"", "nobody"} {
		name := map[string]string{"": "root", "nobody": "nobody"}[user]
		t.Run(name, func(t *testing.T) {
			outside := newEscapeTargets(t)
			control := runEscape(t, f, outside, false, user)
			leaked, viaUnix := outside.received(t)
			for _, p := range workOutside {
				if !control.Probes[p].OK {
					t.Errorf("control: %s failed outside firma run (%+v): the probe proves nothing", p, control.Probes[p])
				}
			}
			if !strings.Contains(leaked, "LEAK via inherited fd 3") || !strings.Contains(viaUnix, "LEAK via abstract") {
				t.Errorf("control: the listeners got %q and %q", leaked, viaUnix)
			}

			targets := newEscapeTargets(t)
			before := len(f.refused())
			r := runEscape(t, f, targets, true, user)
			tcp, unix := targets.received(t)
			if tcp != "" || unix != "" {
				t.Errorf("bytes reached the test's listeners from inside firma run: tcp %q, abstract unix %q", tcp, unix)
			}
			want := sandboxRefuses()
			for _, p := range slices.Sorted(maps.Keys(want)) {
				got, ok := r.Probes[p]
				switch {
				case !ok:
					t.Errorf("%s: not tried", p)
				case want[p] == "" && !got.OK:
					t.Errorf("%s: refused (%s %s), want it to work", p, got.Err, got.Detail)
				case want[p] != "" && (got.OK || got.Err != want[p]):
					t.Errorf("%s: ok=%v err=%s (%s), want %s", p, got.OK, got.Err, got.Detail, want[p])
				}
			}
			// The PID namespace: the agent is not its init, and sees its init and itself only.
			if r.PPID != 1 || r.PID == 1 || r.InitComm != "firma-init" {
				t.Errorf("pid %d, ppid %d, init %q: want the agent as a child of firma's init", r.PID, r.PPID, r.InitComm)
			}
			if procs := slices.Sorted(slices.Values(r.Procs)); !slices.Equal(procs, []int{1, r.PID}) {
				t.Errorf("/proc shows %v, want only init and the agent", procs)
			}
			// A private /dev: no disks, and a pty instance of its own.
			if len(r.BlockDevices) > 0 || !slices.Equal(r.PTYs, []string{"ptmx"}) {
				t.Errorf("/dev has block devices %v and ptys %v", r.BlockDevices, r.PTYs)
			}
			if len(r.FDs) > 0 {
				t.Errorf("descriptors inherited beyond stdio: %v", r.FDs)
			}
			// Every refusal of the seccomp filter was reported to the sidecar, for the audit log,
			// before the agent got its errno.
			reported, families := map[string]bool{}, map[int]bool{}
			for _, ref := range f.refused()[before:] {
				reported[ref.Syscall] = true
				if ref.Syscall == "socket" {
					families[ref.Family] = true
				}
				if ref.Syscall == "socket" && ref.Family == 16 && ref.Protocol == 0 {
					t.Errorf("socket(AF_NETLINK, NETLINK_ROUTE), which glibc tries on name lookups, was reported: %+v", ref)
				}
				if ref.PID <= 0 {
					t.Errorf("refusal without a pid: %+v", ref)
				}
			}
			// (socketpair-netlink asks for NETLINK_ROUTE: refused unrecorded, like socket-netlink.)
			wantCalls := []string{"socket", "ptrace", "pidfd_getfd", "process_vm_readv", "process_vm_writev",
				"kcmp", "process_madvise", "bpf", "perf_event_open", "io_uring_setup", "userfaultfd", "add_key", "keyctl",
				"syslog", "delete_module", "setns", "open_by_handle_at", "kexec_load", "init_module", "finit_module",
				"request_key", "acct", "swapoff"}
			if runtime.GOARCH == "amd64" {
				wantCalls = append(wantCalls, "iopl", "ioperm")
			}
			for _, c := range wantCalls {
				if !reported[c] {
					t.Errorf("the refused %s was not reported to the sidecar (reported: %v)", c, slices.Sorted(maps.Keys(reported)))
				}
			}
			for _, fam := range []int{17, 40, 38, 44, 15, 30} { // packet, vsock, alg, xdp, key, tipc
				if !families[fam] {
					t.Errorf("the refused socket family %d was not reported (reported: %v)", fam, slices.Sorted(maps.Keys(families)))
				}
			}
			f.noCgroupLeft(t)
		})
	}
}

// startUntil starts cmd and returns once it has printed line (a line of its own) on stdout; what
// it writes to stderr is collected in the returned buffer.
func startUntil(t *testing.T, cmd *exec.Cmd, line string) *bytes.Buffer {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := bufio.NewReader(out).ReadString('\n'); got != line+"\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("waiting for %q: got %q, %v\nstderr:\n%s", line, got, err, stderr.String())
	}
	return &stderr
}

// TestRunInitForwardsSignalsAndReaps: signals firma run receives reach the agent through its init
// (the agent handles them itself), orphans are reaped, and init's own status is the agent's.
func TestRunInitForwardsSignalsAndReaps(t *testing.T) {
	f := newFakeSidecar(t)
	for _, tc := range []struct {
		sig  syscall.Signal
		want int
	}{
		{syscall.SIGHUP, 7},   // trapped by the agent: it decides how to end
		{syscall.SIGINT, 130}, // not trapped: the agent dies of it
		{syscall.SIGQUIT, 9},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			// An orphan exits under init; the agent waits until it is gone from /proc (a zombie
			// would stay there), then reports ready and waits for the signal.
			script := `trap 'exit 7' HUP; trap 'exit 9' QUIT
orphan=$(sh -c 'true & echo $!')
while [ -e /proc/$orphan ]; do sleep 0.01; done
echo ready
while :; do sleep 0.05; done`
			cmd := f.command(t, "/", nil, "--", "sh", "-c", script)
			stderr := startUntil(t, cmd, "ready")
			cmd.Process.Signal(tc.sig)
			cmd.Wait()
			if got := cmd.ProcessState.ExitCode(); got != tc.want {
				t.Fatalf("exit %d, want %d; stderr: %s", got, tc.want, stderr.String())
			}
			f.noCgroupLeft(t)
		})
	}
}

// TestRunUserNamespacesStillWork: agents sandbox their tools with bubblewrap, which needs an
// unprivileged user namespace and mounts inside it; in it, firma's hidden files stay hidden.
func TestRunUserNamespacesStillWork(t *testing.T) {
	f := newFakeSidecar(t)
	script := fmt.Sprintf(`unshare -Urm sh -c 'mount -t tmpfs none /mnt && echo mounted; umount %[1]s && echo unmounted; cat %[1]s/ca.key; true'`, f.CADir)
	res := f.run(t, "/", nil, "--user", "nobody", "--", "sh", "-c", script)
	if res.Code != 0 || !strings.Contains(res.Stdout, "mounted\n") {
		t.Fatalf("user namespace in firma run: exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	if strings.Contains(res.Stdout, "SECRET") || strings.Contains(res.Stdout, "unmounted") {
		t.Fatalf("the hidden directory was uncovered from a user namespace:\n%s", res.Stdout)
	}
	f.noCgroupLeft(t)
}

// TestRunProfilesKeepClientsWorking: every built-in profile, as root and as nobody, with the whole
// sandbox in place, still runs the clients agents are made of — over HTTPS to a host whose
// certificate only firma's CA signs.
func TestRunProfilesKeepClientsWorking(t *testing.T) {
	f := newFakeSidecar(t)
	addr := testutil.LoopbackAddr(t)
	up := testutil.NewHTTPSUpstream(t, "profiles", netip.AddrPortFrom(addr, 0), f.CA, addr.String())
	url := fmt.Sprintf("https://%s:%s/p", addr, up.Port())
	ws, err := os.MkdirTemp("", "firma-run-ws-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ws) })
	os.Chmod(ws, 0o777)
	script := fmt.Sprintf(`set -e
curl -sS %[1]s
python3 -c 'import urllib.request; print(urllib.request.urlopen("%[1]s").read().decode(), end="")'
node -e 'require("https").get("%[1]s", r => r.pipe(process.stdout)).on("error", e => { console.error(e.message); process.exit(1) })'
%[2]s %[1]s
echo > probe && rm probe && echo workspace-writable`, url, goClient)
	for _, profile := range []string{"generic", "codex", "claude-code"} {
		for _, user := range []string{"", "nobody"} {
			t.Run(profile+"/"+map[string]string{"": "root", "nobody": "nobody"}[user], func(t *testing.T) {
				args := []string{"--profile", profile}
				if user != "" {
					args = append(args, "--user", user)
				}
				res := f.run(t, ws, nil, append(args, "--", "sh", "-c", script)...)
				if res.Code != 0 || strings.Count(res.Stdout, "hello from profiles /p\n") != 4 || !strings.Contains(res.Stdout, "workspace-writable") {
					t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
				}
				t.Logf("DEBUG refusals: %+v", f.refused())
			})
		}
	}
	f.noCgroupLeft(t)
}

// TestRunProfileDevices: a profile's devices key brings host devices into the private /dev; the
// rest of the host's /dev stays out.
func TestRunProfileDevices(t *testing.T) {
	f := newFakeSidecar(t)
	var dev string
	for _, d := range []string{"/dev/kvm", "/dev/net/tun", "/dev/fuse", "/dev/loop-control", "/dev/hwrng"} {
		if _, err := os.Stat(d); err == nil {
			dev = d
			break
		}
	}
	if dev == "" {
		t.Fatal("no host device to bind in (looked for kvm, net/tun, fuse, loop-control, hwrng)")
	}
	cfg := filepath.Join(t.TempDir(), "firma.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[run.profiles.dev]\ndevices = [%q, \"/dev/firma-no-such-device\"]\n", dev)), 0o600)
	res := f.run(t, "/", nil, "-c", cfg, "--profile", "dev", "--", "sh", "-c", fmt.Sprintf("test -c %s && echo bound; ls /dev", dev))
	if res.Code != 0 || !strings.Contains(res.Stdout, "bound\n") || strings.Contains(res.Stdout, "firma-no-such-device") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, name := range strings.Fields(res.Stdout) {
		if name != "bound" && !slices.Contains([]string{"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
			"stdout", "tty", "urandom", "zero", filepath.Base(filepath.Dir(dev)), filepath.Base(dev)}, name) {
			t.Errorf("/dev holds %s", name)
		}
	}
	f.noCgroupLeft(t)
}

// BenchmarkRunStartup is what the sandbox costs each run: `firma run -- true` from start to exit
// (control socket, cgroup, namespaces, init, exec step, seccomp and Landlock, cleanup), against
// the fake sidecar.
func BenchmarkRunStartup(b *testing.B) {
	f := newFakeSidecar(b)
	for b.Loop() {
		if res := f.run(b, "/", nil, "--", "true"); res.Code != 0 {
			b.Fatalf("exit %d: %s", res.Code, res.Stderr)
		}
	}
	f.noCgroupLeft(b)
}
