package runner_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/testutil"
)

// firmaBin, goClient and escapeBin are built once for the root tests, in a directory every user
// may read (the agents run as nobody too).
var firmaBin, goClient, escapeBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // the root tests skip themselves
		}
		dir, err := os.MkdirTemp("", "firma-runner-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		firmaBin, goClient, escapeBin = filepath.Join(dir, "firma"), filepath.Join(dir, "goclient"), filepath.Join(dir, "escape")
		for bin, pkg := range map[string]string{firmaBin: "../cmd/firma", goClient: "./testdata/goclient", escapeBin: "../internal/e2e/cmd/sandboxescape"} {
			out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// fakeSidecar is a control server standing in for the sidecar: it enforces nothing, but it tells
// firma run what the real one would and records what firma run registers.
type fakeSidecar struct {
	Socket string
	Parent *testutil.Cgroup
	CA     *testutil.CA
	CADir  string // hidden from agents; holds ca.key
	reject string // when set, Register fails with this message

	mu         sync.Mutex
	registered []control.Registration
	current    map[string]bool
	regCh      chan control.Registration
	refusals   []control.Refusal
}

func (f *fakeSidecar) Info() control.Info {
	return control.Info{
		Version:   "test",
		Cgroup:    f.Parent.Rel,
		CACertPEM: string(f.CA.CertPEM),
		DNS:       "127.0.0.1:15053",
		Hide:      []string{f.CADir},
	}
}

func (f *fakeSidecar) Register(_ context.Context, r control.Registration) error {
	f.mu.Lock()
	if f.reject != "" {
		defer f.mu.Unlock()
		return errors.New(f.reject)
	}
	f.registered = append(f.registered, r)
	f.current[r.Cgroup] = true
	f.mu.Unlock()
	select {
	case f.regCh <- r:
	default:
	}
	return nil
}

func (f *fakeSidecar) Unregister(_ context.Context, cg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.current, cg)
	return nil
}

func (f *fakeSidecar) Refused(_ context.Context, r control.Refusal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refusals = append(f.refusals, r)
	return nil
}

// refused returns the sandbox refusals firma run reported.
func (f *fakeSidecar) refused() []control.Refusal {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]control.Refusal(nil), f.refusals...)
}

func (f *fakeSidecar) last(t *testing.T) control.Registration {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.registered) == 0 {
		t.Fatal("firma run registered nothing")
	}
	return f.registered[len(f.registered)-1]
}

func (f *fakeSidecar) stillRegistered() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for cg := range f.current {
		out = append(out, cg)
	}
	return out
}

func newFakeSidecar(t testing.TB) *fakeSidecar {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	f := &fakeSidecar{
		Socket:  filepath.Join(dir, "run", "control.sock"),
		Parent:  testutil.NewCgroup(t, nil),
		CA:      testutil.NewCA(t, "firma test MITM CA"),
		CADir:   filepath.Join(dir, "ca"),
		current: map[string]bool{},
		regCh:   make(chan control.Registration, 1),
	}
	if err := os.Mkdir(f.CADir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.CADir, "ca.key"), []byte("SECRET KEY MATERIAL"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := control.Listen(f.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		control.NewServer(f, zerolog.Nop()).Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return f
}

type result struct {
	Code   int
	Stdout string
	Stderr string
}

// firmaRun runs `firma run --sidecar S <args>` and waits for it.
func (f *fakeSidecar) run(t testing.TB, dir string, env []string, args ...string) result {
	t.Helper()
	cmd := f.command(t, dir, env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return result{Code: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String()}
}

func (f *fakeSidecar) command(t testing.TB, dir string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, firmaBin, append([]string{"run", "--sidecar", f.Socket}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(testutil.CleanEnv(), env...)
	return cmd
}

// noCgroupLeft asserts the test parent has no child cgroup and firma run unregistered everything.
func (f *fakeSidecar) noCgroupLeft(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir(f.Parent.Path)
	if err != nil {
		t.Fatalf("the parent cgroup is gone: %v", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("cgroup left behind: %s", filepath.Join(f.Parent.Path, e.Name()))
		}
	}
	if left := f.stillRegistered(); len(left) > 0 {
		t.Errorf("still registered: %v", left)
	}
}

func TestRunPlacesRegistersAndCleansEnv(t *testing.T) {
	f := newFakeSidecar(t)
	script := fmt.Sprintf(`echo "pid=$$"; echo "cgroup=$(grep ^0:: /proc/self/cgroup)"; for p in %s/*/cgroup.procs; do echo "procs $p: $(tr '\n' ' ' < "$p")"; done; cat /etc/resolv.conf; env`, f.Parent.Path)
	res := f.run(t, "/", []string{"HTTPS_PROXY=http://proxy.example:3128", "http_proxy=http://proxy.example:3128",
		"No_Proxy=localhost", "ALL_PROXY=socks5://x"}, "--", "sh", "-c", script)
	if res.Code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	reg := f.last(t)
	if !strings.HasPrefix(reg.Cgroup, f.Parent.Rel+"/firma-run-") || reg.AgentID != "generic" ||
		reg.SessionID == "" || reg.PID <= 0 || reg.CapabilityFile != "" {
		t.Fatalf("registration %+v", reg)
	}
	pid := lineValue(res.Stdout, "pid=")
	wantProcs := fmt.Sprintf("procs %s/cgroup.procs:", filepath.Join(filepath.Dir(f.Parent.Path), strings.TrimPrefix(reg.Cgroup, filepath.Dir(f.Parent.Rel))))
	found := false
	for _, line := range strings.Split(res.Stdout, "\n") {
		if strings.HasPrefix(line, wantProcs) && strings.Contains(" "+line+" ", " "+pid+" ") {
			found = true
		}
	}
	if !found {
		t.Errorf("agent pid %s not in the registered cgroup %s (want a line %q)", pid, reg.Cgroup, wantProcs)
	}
	if got := lineValue(res.Stdout, "cgroup="); got != "0::/" {
		t.Errorf("agent's /proc/self/cgroup = %q, want 0::/ (a cgroup namespace rooted at its cgroup)", got)
	}
	for _, line := range strings.Split(res.Stdout, "\n") {
		name, _, _ := strings.Cut(line, "=")
		if strings.HasSuffix(strings.ToLower(name), "_proxy") {
			t.Errorf("proxy variable in the agent's environment: %s", line)
		}
	}
	for _, v := range []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"} {
		if got := lineValue(res.Stdout, v+"="); got != "/etc/ssl/certs/ca-certificates.crt" {
			t.Errorf("%s = %q", v, got)
		}
	}
	if !strings.Contains(res.Stdout, "nameserver 127.0.0.1\n") || strings.Count(res.Stdout, "nameserver ") != 1 {
		t.Errorf("resolv.conf does not point (only) at the sidecar resolver")
	}
	f.noCgroupLeft(t)
}

func lineValue(out, prefix string) string {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return v
		}
	}
	return ""
}

// TestRunTrustsTheSidecarCA serves HTTPS with a leaf from a CA that only the control server's Info
// carries: clients inside firma run must trust it with no flag, clients outside must not.
func TestRunTrustsTheSidecarCA(t *testing.T) {
	f := newFakeSidecar(t)
	addr := testutil.LoopbackAddr(t)
	up := testutil.NewHTTPSUpstream(t, "trust", netip.AddrPortFrom(addr, 0), f.CA, addr.String())
	url := fmt.Sprintf("https://%s:%s/hello", addr, up.Port())

	if out, err := exec.Command("curl", "-sS", url).CombinedOutput(); err == nil {
		t.Fatalf("curl outside firma run trusted the test CA: %s", out)
	}
	node := fmt.Sprintf(`require("https").get(%q, r => { let b = ""; r.on("data", d => b += d); r.on("end", () => process.stdout.write(b)); }).on("error", e => { console.error(e.message); process.exit(1); });`, url)
	for name, argv := range map[string][]string{
		// The env -u forms prove trust through the bind-mounted bundle alone.
		"curl":          {"curl", "-sS", url},
		"curl-mount":    {"env", "-u", "CURL_CA_BUNDLE", "-u", "SSL_CERT_FILE", "curl", "-sS", url},
		"python3":       {"python3", "-c", fmt.Sprintf("import urllib.request; print(urllib.request.urlopen(%q).read().decode(), end='')", url)},
		"python3-mount": {"env", "-u", "SSL_CERT_FILE", "-u", "REQUESTS_CA_BUNDLE", "python3", "-c", fmt.Sprintf("import urllib.request; print(urllib.request.urlopen(%q).read().decode(), end='')", url)},
		"node":          {"node", "-e", node},
		"go-mount":      {"env", "-u", "SSL_CERT_FILE", goClient, url},
	} {
		t.Run(name, func(t *testing.T) {
			res := f.run(t, "/", nil, append([]string{"--"}, argv...)...)
			if res.Code != 0 || res.Stdout != "hello from trust /hello\n" {
				t.Fatalf("exit %d, stdout %q, stderr %q", res.Code, res.Stdout, res.Stderr)
			}
		})
	}
	f.noCgroupLeft(t)
}

// TestRunEscapes tries the ways out an agent has; each must fail and leave the enforced parent (and
// the agent's own placement) as it was.
func TestRunEscapes(t *testing.T) {
	f := newFakeSidecar(t)
	other := testutil.NewCgroup(t, nil)
	addr := testutil.LoopbackAddr(t)
	up := testutil.NewHTTPSUpstream(t, "escape", netip.AddrPortFrom(addr, 0), f.CA, addr.String())
	for _, tc := range []struct {
		name string
		argv []string
		want string // in stderr
	}{
		{"move to another cgroup", []string{"sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs", other.Path)}, "Read-only file system"},
		{"move to the parent cgroup", []string{"sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs", f.Parent.Path)}, "Read-only file system"},
		{"raw socket", []string{"python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"}, "PermissionError"},
		{"read the CA key", []string{"cat", filepath.Join(f.CADir, "ca.key")}, "No such file"},
		{"connect to the control socket", []string{"python3", "-c", fmt.Sprintf("import socket; s = socket.socket(socket.AF_UNIX); s.connect(%q)", f.Socket)}, "ConnectionRefusedError"},
		{"unshare -n", []string{"unshare", "-n", "true"}, "Operation not permitted"},
		{"remount cgroupfs", []string{"mount", "-o", "remount,rw", filepath.Dir(f.Parent.Path)}, "permission denied"},
		// A user namespace needs no privilege, and gives a network namespace of its own, with nothing in it.
		{"unshare -Un then connect", []string{"unshare", "-Un", "curl", "-sS", fmt.Sprintf("https://%s:%s/", addr, up.Port())}, "Couldn't connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.run(t, "/", nil, append([]string{"--"}, tc.argv...)...)
			if res.Code == 0 || !strings.Contains(res.Stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want failure with %q", res.Code, res.Stdout, res.Stderr, tc.want)
			}
			if procs, err := os.ReadFile(filepath.Join(other.Path, "cgroup.procs")); err != nil || len(procs) != 0 {
				t.Fatalf("other cgroup: %q, %v", procs, err)
			}
			f.noCgroupLeft(t)
		})
	}
	if up.Conns() != 0 {
		t.Errorf("the upstream saw %d connections", up.Conns())
	}
}

func TestRunExitStatus(t *testing.T) {
	f := newFakeSidecar(t)
	if res := f.run(t, "/", nil, "--", "sh", "-c", "exit 3"); res.Code != 3 {
		t.Fatalf("exit 3 → %d (%s)", res.Code, res.Stderr)
	}
	if res := f.run(t, "/", nil, "--", "sh", "-c", "kill -TERM $$"); res.Code != 128+int(syscall.SIGTERM) {
		t.Fatalf("killed by SIGTERM → %d (%s)", res.Code, res.Stderr)
	}
	f.noCgroupLeft(t)
}

func TestRunSIGTERMEndsTheAgent(t *testing.T) {
	f := newFakeSidecar(t)
	for _, tc := range []struct {
		name   string
		script string
		want   int
	}{
		{"agent exits on SIGTERM", "sleep 60 & wait", 128 + int(syscall.SIGTERM)},
		// An agent that ignores SIGTERM is killed with its whole cgroup after stop_timeout_seconds.
		{"agent ignores SIGTERM", `trap "" TERM; sleep 60 & while :; do wait; done`, 128 + int(syscall.SIGKILL)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "firma.toml")
			os.WriteFile(cfg, []byte("[run]\nstop_timeout_seconds = 1\n"), 0o600)
			cmd := f.command(t, "/", nil, "-c", cfg, "--", "sh", "-c", tc.script)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-f.regCh:
			case <-time.After(10 * time.Second):
				t.Fatalf("no registration; stderr: %s", stderr.String())
			}
			time.Sleep(200 * time.Millisecond) // let the agent start its sleep
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			if got := cmd.ProcessState.ExitCode(); got != tc.want {
				t.Fatalf("exit %d, want %d; stderr: %s", got, tc.want, stderr.String())
			}
			f.noCgroupLeft(t)
		})
	}
}

func TestRunWithoutSidecarStartsNothing(t *testing.T) {
	f := newFakeSidecar(t)
	marker := filepath.Join(t.TempDir(), "ran")
	missing := filepath.Join(t.TempDir(), "control.sock")
	cmd := exec.Command(firmaBin, "run", "--sidecar", missing, "--", "touch", marker)
	out, err := cmd.CombinedOutput()
	if err == nil || cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("firma run succeeded without a sidecar: %s", out)
	}
	if !strings.Contains(string(out), "firma sidecar is not running") || !strings.Contains(string(out), missing) {
		t.Fatalf("message does not say the sidecar is not running at %s: %s", missing, out)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the command ran")
	}
	f.noCgroupLeft(t)
}

func TestRunRefusedRegistrationStartsNothing(t *testing.T) {
	f := newFakeSidecar(t)
	f.mu.Lock()
	f.reject = "capability /tmp/cap.toml: token expired at 2026-01-01T00:00:00Z"
	f.mu.Unlock()
	marker := filepath.Join(t.TempDir(), "ran")
	res := f.run(t, "/", nil, "--", "touch", marker)
	if res.Code == 0 || !strings.Contains(res.Stderr, f.reject) {
		t.Fatalf("exit %d, stderr %q: want the sidecar's message verbatim", res.Code, res.Stderr)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the command ran")
	}
	f.noCgroupLeft(t)
}

func TestRunCapabilitiesAndUser(t *testing.T) {
	f := newFakeSidecar(t)
	res := f.run(t, "/", nil, "--", "grep", "^Cap\\|^NoNewPrivs", "/proc/self/status")
	if res.Code != 0 {
		t.Fatalf("exit %d: %s", res.Code, res.Stderr)
	}
	bnd := capMask(t, lineValue(res.Stdout, "CapBnd:"))
	for name, c := range map[string]uint{"net_raw": 13, "net_admin": 12, "sys_admin": 21, "bpf": 39, "perfmon": 38, "sys_ptrace": 19, "sys_module": 16, "dac_read_search": 2, "mknod": 27} {
		if bnd&(1<<c) != 0 {
			t.Errorf("bounding set keeps %s", name)
		}
	}
	if eff := capMask(t, lineValue(res.Stdout, "CapEff:")); eff != bnd || eff == 0 {
		t.Errorf("root agent: CapEff %x, CapBnd %x", eff, bnd)
	}
	if strings.TrimSpace(lineValue(res.Stdout, "NoNewPrivs:")) != "1" {
		t.Errorf("no_new_privs not set:\n%s", res.Stdout)
	}

	res = f.run(t, "/", nil, "--user", "nobody", "--", "sh", "-c", "id -u; id -g; grep ^Cap /proc/self/status; echo HOME=$HOME")
	if res.Code != 0 {
		t.Fatalf("--user nobody: exit %d: %s", res.Code, res.Stderr)
	}
	lines := strings.Split(res.Stdout, "\n")
	if lines[0] != "65534" || lines[1] != "65534" {
		t.Fatalf("--user nobody runs as %q:%q", lines[0], lines[1])
	}
	for _, set := range []string{"CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"} {
		if m := capMask(t, lineValue(res.Stdout, set)); m != 0 {
			t.Errorf("--user nobody: %s %x, want none", set, m)
		}
	}
	f.noCgroupLeft(t)
}

func capMask(t *testing.T, hex string) uint64 {
	t.Helper()
	var m uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(hex), "%x", &m); err != nil {
		t.Fatalf("capability mask %q: %v", hex, err)
	}
	return m
}

// TestRunProfile uses a configured profile: the workspace stays writable inside a read-only tree,
// masked paths are empty, unset_env and env apply.
func TestRunProfile(t *testing.T) {
	f := newFakeSidecar(t)
	root := t.TempDir()
	ws := filepath.Join(root, "tree", "ws")
	secret := filepath.Join(root, "secret")
	for _, d := range []string{ws, secret} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(secret, "id_ed25519"), []byte("PRIVATE"), 0o600)
	cfg := filepath.Join(root, "firma.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
[run.profiles.test]
agent_id = "tester"
workspace = true
read_only = [%q]
mask = [%q]
unset_env = ["*_API_KEY"]
env = { FIRMA_PROFILE_TEST = "yes" }
`, filepath.Join(root, "tree"), secret)), 0o600)
	script := fmt.Sprintf(`touch ws-file && echo ws-ok; touch %s/x 2>&1; ls -A %s; echo "key=${ANTHROPIC_API_KEY:-unset} p=$FIRMA_PROFILE_TEST"`,
		filepath.Join(root, "tree"), secret)
	res := f.run(t, ws, []string{"ANTHROPIC_API_KEY=sk-ant-secret"}, "-c", cfg, "--profile", "test", "--", "sh", "-c", script)
	if res.Code != 0 {
		t.Fatalf("exit %d: %s", res.Code, res.Stderr)
	}
	if !strings.Contains(res.Stdout, "ws-ok\n") || !strings.Contains(res.Stdout, "Read-only file system") ||
		strings.Contains(res.Stdout, "id_ed25519") || !strings.Contains(res.Stdout, "key=unset p=yes") {
		t.Fatalf("profile not applied:\n%s", res.Stdout)
	}
	if _, err := os.Stat(filepath.Join(ws, "ws-file")); err != nil {
		t.Fatalf("workspace write did not reach the host: %v", err)
	}
	if reg := f.last(t); reg.AgentID != "tester" {
		t.Fatalf("agent id %q, want the profile's", reg.AgentID)
	}
	f.noCgroupLeft(t)
}
