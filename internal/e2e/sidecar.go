//go:build linux

// Package e2e runs the real firma binary for end-to-end tests: a sidecar process with programs
// attached to a fresh cgroup, and clients run inside it. Test code only.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/testutil"
)

// AgentID is the identity the harness gives its agent cgroup.
const AgentID = "test-agent"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binary builds cmd/firma and the Go test clients once per test binary and returns the path of the
// requested one: "firma", "httpclient", "benchclient" or "loadgen".
func Binary(tb testing.TB, name string) string {
	tb.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "firma-e2e-bin-")
		if buildErr != nil {
			return
		}
		for out, pkg := range map[string]string{
			"firma":       "./cmd/firma",
			"httpclient":  "./internal/e2e/cmd/httpclient",
			"benchclient": "./internal/e2e/cmd/benchclient",
			"loadgen":     "./internal/e2e/cmd/loadgen",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, out), pkg)
			cmd.Dir = root
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return filepath.Join(buildDir, name)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the firma module")
	}
	return filepath.Dir(mod), nil
}

// SidecarOptions shape the sidecar a test runs.
type SidecarOptions struct {
	// Policies are the .cedar files of the policy dir (name → text). Default: TestPolicy.
	Policies map[string]string
	// Rules is mapping-rules.toml. Default: every intent is communication.external.send.
	Rules string
	// DefaultProtected is [sidecar.mapping] default_protected (default true).
	DefaultProtected *bool
	// Resolve is [sidecar.upstream] resolve: names to the fake upstreams' addresses.
	Resolve map[string]string
	// UpstreamCA is [sidecar.upstream] ca_file.
	UpstreamCA string
	// ExtraTOML is appended to the generated firma.toml (more sections, more agents).
	ExtraTOML string
	// ProxyAgentID is [sidecar.interceptor] agent_id: the identity of explicit-proxy clients
	// outside every enforced cgroup (none: they are denied as unknown agents).
	ProxyAgentID string
	// AuditTOML is added inside [sidecar.audit] (signing_key_path, fsync_interval, …).
	AuditTOML string
	// TransparentTOML is added inside [sidecar.transparent] (idle_timeout, refusal_rate, …).
	TransparentTOML string
	// AuditPath replaces the audit log's path (default: audit.jsonl in the sidecar's dir).
	AuditPath string
	// NoAgent leaves out the harness's [[sidecar.agents]] entry.
	NoAgent bool
	// Env is added to the sidecar's environment.
	Env []string
	// Wrap is a command line the sidecar runs under (e.g. nsenter into a journald's namespace).
	Wrap []string
	// LogLevel is [sidecar] log_level (default "debug"; benchmarks run at "info", as operators do).
	LogLevel string
	// NetNS runs the sidecar, and the agents Run and Command start, inside this network namespace
	// (a NetLab's Inside, say) instead of the test's. The sidecar keeps the host's mounts.
	NetNS *testutil.NetNS
	// Nameservers is [sidecar.upstream] nameservers. With NetNS and none given, the sidecar
	// forwards to 127.0.0.1:9 inside the namespace, where nothing answers: nothing of its own may
	// leave the namespace unless the test says where.
	Nameservers []string
}

// TestPolicy permits the agent to reach allowed.test and plain.test (except /secret paths) and
// forbids denied.test for everyone.
const TestPolicy = `@id("permit-test-hosts")
permit (
    principal == Firma::Agent::"test-agent",
    action == Firma::Action::"communication.external.send",
    resource
) when {
    resource has "host" &&
    (resource.host == "allowed.test" || resource.host == "plain.test" || resource.host like "*.allowed.test")
};

@id("forbid-secret-paths")
forbid (principal, action, resource)
when { resource has "path" && resource.path like "/secret*" };

@id("forbid-denied")
forbid (principal, action, resource)
when { resource has "host" && resource.host == "denied.test" };
`

// CatchAllRules classifies every intent, connection-level, HTTP and DNS alike.
const CatchAllRules = `[[rules]]
method = "*"
host = "*"
action_class = "communication.external.send"
`

// Sidecar is a firma sidecar process run by a test, with an enforced parent cgroup and one agent
// cgroup inside it.
type Sidecar struct {
	Bin        string
	Dir        string
	ConfigPath string
	AuditPath  string
	PinDir     string
	Parent     *testutil.Cgroup // the enforced parent ([sidecar.transparent] cgroup)
	Agent      *testutil.Cgroup // Parent/<rand>, the agent AgentID
	Port       uint16
	DNSPort    uint16
	ProxyPort  uint16
	// ControlSocket is where `firma run` registers agents with this sidecar.
	ControlSocket string

	opts SidecarOptions
	mu   sync.Mutex
	proc *Process
}

// NewSidecar writes a config and starts a sidecar with it, waiting until it logs "sidecar ready".
func NewSidecar(tb testing.TB, opts SidecarOptions) *Sidecar {
	tb.Helper()
	s := PrepareSidecar(tb, opts)
	s.Start(tb)
	return s
}

// PrepareSidecar makes the cgroups, picks ports and writes the config, without starting anything:
// a test that must watch start-up itself calls Start.
func PrepareSidecar(tb testing.TB, opts SidecarOptions) *Sidecar {
	tb.Helper()
	testutil.RequireRoot(tb)
	s := &Sidecar{Bin: Binary(tb, "firma"), Dir: tb.TempDir(), opts: opts}
	s.Parent = testutil.NewCgroup(tb, nil)
	s.Agent = testutil.NewCgroup(tb, s.Parent)
	ports := testutil.FreePorts(tb, 3)
	s.Port, s.DNSPort, s.ProxyPort = ports[0], ports[1], ports[2]
	s.PinDir = "/sys/fs/bpf/" + filepath.Base(s.Parent.Path)
	s.AuditPath = filepath.Join(s.Dir, "audit.jsonl")
	if opts.AuditPath != "" {
		s.AuditPath = opts.AuditPath
	}
	s.ControlSocket = filepath.Join(s.Dir, "run", "control.sock")
	s.ConfigPath = filepath.Join(s.Dir, "firma.toml")
	s.writeFiles(tb)
	tb.Cleanup(func() {
		s.Stop(tb)
		if err := bpf.Cleanup(s.PinDir); err != nil {
			tb.Errorf("bpf cleanup: %v", err)
		}
	})
	return s
}

func (s *Sidecar) writeFiles(tb testing.TB) {
	tb.Helper()
	polDir := filepath.Join(s.Dir, "policies")
	if err := os.Mkdir(polDir, 0o755); err != nil {
		tb.Fatal(err)
	}
	pols := s.opts.Policies
	if pols == nil {
		pols = map[string]string{"test.cedar": TestPolicy}
	}
	for name, text := range pols {
		if err := os.WriteFile(filepath.Join(polDir, name), []byte(text), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	rules := s.opts.Rules
	if rules == "" {
		rules = CatchAllRules
	}
	rulesPath := filepath.Join(s.Dir, "mapping-rules.toml")
	if err := os.WriteFile(rulesPath, []byte(rules), 0o644); err != nil {
		tb.Fatal(err)
	}
	protected := true
	if s.opts.DefaultProtected != nil {
		protected = *s.opts.DefaultProtected
	}
	logLevel := s.opts.LogLevel
	if logLevel == "" {
		logLevel = "debug"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `[sidecar]
log_level = %q

[sidecar.transparent]
cgroup = %q
port = %d
dns_port = %d
ipv6 = true
pin_dir = %q
%s

[sidecar.interceptor]
listen_addr = "127.0.0.1:%d"
agent_id = %q

[sidecar.control]
socket = %q

[sidecar.policy]
dir = %q

[sidecar.mapping]
rules_path = %q
default_protected = %v

[sidecar.audit]
file_path = %q
%s

[sidecar.upstream]
allow_cidrs = ["127.0.0.0/8", "::1/128"]
`, logLevel, strings.TrimPrefix(s.Parent.Rel, "/"), s.Port, s.DNSPort, s.PinDir, s.opts.TransparentTOML, s.ProxyPort, s.opts.ProxyAgentID, s.ControlSocket, polDir, rulesPath, protected, s.AuditPath, s.opts.AuditTOML)
	nameservers := s.opts.Nameservers
	if nameservers == nil && s.opts.NetNS != nil {
		nameservers = []string{"127.0.0.1:9"}
	}
	if len(nameservers) > 0 {
		fmt.Fprintf(&b, "nameservers = [%s]\n", quoteList(nameservers))
	}
	if s.opts.UpstreamCA != "" {
		fmt.Fprintf(&b, "ca_file = %q\n", s.opts.UpstreamCA)
	}
	if len(s.opts.Resolve) > 0 {
		names := make([]string, 0, len(s.opts.Resolve))
		for n := range s.opts.Resolve {
			names = append(names, n)
		}
		sort.Strings(names)
		var kv []string
		for _, n := range names {
			kv = append(kv, fmt.Sprintf("%q = %q", n, s.opts.Resolve[n]))
		}
		fmt.Fprintf(&b, "resolve = { %s }\n", strings.Join(kv, ", "))
	}
	if !s.opts.NoAgent {
		fmt.Fprintf(&b, "\n[[sidecar.agents]]\ncgroup = %q\nagent_id = %q\n", strings.TrimPrefix(s.Agent.Rel, "/"), AgentID)
	}
	b.WriteString("\n" + s.opts.ExtraTOML + "\n")
	if err := os.WriteFile(s.ConfigPath, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// Start runs the sidecar and waits for "sidecar ready".
func (s *Sidecar) Start(tb testing.TB) {
	tb.Helper()
	argv := append(append([]string{}, s.opts.Wrap...), s.Bin, "sidecar", "-c", s.ConfigPath)
	p := StartProcessIn(tb, s.opts.NetNS, s.Dir, append(testutil.CleanEnv(), s.opts.Env...), "sidecar ready", 30*time.Second,
		argv[0], argv[1:]...)
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
}

func (s *Sidecar) process() *Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// Kill9 kills the sidecar without letting it clean up, as a crash would.
// PID is the running sidecar's pid.
func (s *Sidecar) PID() int { return s.process().PID() }

func (s *Sidecar) Kill9(tb testing.TB) {
	tb.Helper()
	if p := s.process(); p != nil {
		p.Kill()
	}
}

// Stop sends SIGTERM and waits (bounded) for the sidecar to drain and exit.
func (s *Sidecar) Stop(tb testing.TB) {
	tb.Helper()
	if p := s.process(); p != nil {
		p.Stop(tb, 15*time.Second)
	}
}

// Logs is everything the sidecar has written to stdout and stderr.
func (s *Sidecar) Logs() string {
	if p := s.process(); p != nil {
		return p.Logs()
	}
	return ""
}

// Run runs a command inside the agent cgroup with no proxy variables and returns its combined
// output.
func (s *Sidecar) Run(tb testing.TB, name string, args ...string) (string, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := s.Command(ctx, tb, s.Agent, name, args...).CombinedOutput()
	return string(out), err
}

// Command prepares name to run inside cg (the agent cgroup, or another below the enforced parent)
// from its first instruction, with no proxy variables — inside the sidecar's network namespace
// when it has one; cmd.Process.Pid is then name's pid too.
func (s *Sidecar) Command(ctx context.Context, tb testing.TB, cg *testutil.Cgroup, name string, args ...string) *exec.Cmd {
	tb.Helper()
	if s.opts.NetNS != nil {
		return s.opts.NetNS.Command(ctx, tb, cg, name, args...)
	}
	return cg.Command(ctx, tb, name, args...)
}

// StartCommand starts cmd in the sidecar's network namespace, when it has one, keeping the test's
// mounts (NetNS.Command's `ip netns exec` gives a process a fresh /sys): for `firma run`, which
// needs the host's cgroup2 mount.
func (s *Sidecar) StartCommand(cmd *exec.Cmd) error {
	if s.opts.NetNS != nil {
		return s.opts.NetNS.Do(cmd.Start)
	}
	return cmd.Start()
}

// FirmaRun prepares `firma run` against this sidecar as agent AgentID with flags (--user, …) and
// the command after "--"; start it with StartCommand.
func (s *Sidecar) FirmaRun(ctx context.Context, tb testing.TB, flags []string, name string, args ...string) *exec.Cmd {
	tb.Helper()
	argv := append([]string{"run", "--sidecar", s.ControlSocket, "--agent-id", AgentID, "--profile", "generic"}, flags...)
	cmd := exec.CommandContext(ctx, s.Bin, append(append(argv, "--", name), args...)...)
	cmd.Env = testutil.CleanEnv()
	cmd.Dir = tb.TempDir()
	return cmd
}

// Events reads the audit log.
func (s *Sidecar) Events(tb testing.TB) []audit.Event {
	tb.Helper()
	return ReadEvents(tb, s.AuditPath)
}

// Decisions returns the decision records (not completions) of the audit log.
func (s *Sidecar) Decisions(tb testing.TB) []audit.Event {
	tb.Helper()
	var out []audit.Event
	for _, ev := range s.Events(tb) {
		if ev.Kind == audit.KindDecision {
			out = append(out, ev)
		}
	}
	return out
}

// WaitEvent polls the audit log until match holds for some record, and returns it.
func (s *Sidecar) WaitEvent(tb testing.TB, what string, match func(audit.Event) bool) audit.Event {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, ev := range s.Events(tb) {
			if match(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no audit record %s; log:\n%s\nsidecar:\n%s", what, dumpFile(s.AuditPath), s.Logs())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ReadEvents parses an audit JSONL file.
func ReadEvents(tb testing.TB, path string) []audit.Event {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		tb.Fatal(err)
	}
	defer f.Close()
	var out []audit.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			tb.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func dumpFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
