//go:build linux

// Package monitortoenforce holds the stand-in agent of the guide "From monitor to enforce"
// (docs/guides/from-monitor-to-enforce.md) and a test that follows the guide as written.
package monitortoenforce

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
	"github.com/openfirma/firma/policies"
)

// The guide's commands, verbatim: TestGuideFromMonitorToEnforce checks that the guide holds every
// one of them, and runs them in the directory of firma.toml.
const (
	stepMonitor  = "firma run -c firma.toml --monitor --agent-id coder -- ./agent.sh"
	stepDoctor   = "firma doctor -c firma.toml"
	stepTail     = "firma audit tail -c firma.toml --agent coder --deny --since 1h"
	stepSuggest  = "firma policy suggest -c firma.toml --agent coder --exclude telemetry.example.net --out policy-coder"
	stepValidate = "firma policy validate policy-coder policy-coder/mapping-rules.toml"
	stepReplay   = "firma policy replay -c firma.toml --policy policy-coder --rules policy-coder/mapping-rules.toml --agent coder"
	stepEnforce  = "firma run -c firma.toml --agent-id coder -- ./agent.sh"
	stepCI       = "firma policy replay -c firma.toml --policy policy-strict --rules policy-coder/mapping-rules.toml --baseline-policy policy-coder --json"
)

// The steps of agent.sh, and the requests each one makes.
var agentSteps = []string{"repo", "issues", "upload", "llm", "index", "database", "release", "package", "telemetry"}

// world is the test's plumbing: fake upstreams for the agent's hosts on loopback addresses, named
// through [sidecar.upstream] resolve, and a sidecar that starts with firma's built-in policy.
type world struct {
	s                                     *e2e.Sidecar
	github, anthropic, pypi, tele, openai *testutil.Upstream
	mirror                                *testutil.Upstream
	db                                    *testutil.TCPCounter
	env                                   []string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "curl")
	testutil.RequireTool(t, "python3")
	w := &world{}
	ca := testutil.NewCA(t, "monitor-to-enforce upstream CA")
	loop := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(testutil.LoopbackAddr(t), port) }
	w.github = testutil.NewHTTPSUpstream(t, "github", loop(443), ca, "api.github.com", "uploads.github.com")
	w.anthropic = testutil.NewHTTPSUpstream(t, "anthropic", loop(443), ca, "api.anthropic.com")
	w.pypi = testutil.NewHTTPSUpstream(t, "pypi", loop(443), ca, "pypi.org")
	w.tele = testutil.NewHTTPSUpstream(t, "telemetry", loop(443), ca, "telemetry.example.net")
	w.openai = testutil.NewHTTPSUpstream(t, "openai", loop(443), ca, "api.openai.com")
	w.mirror = testutil.NewHTTPUpstream(t, "mirror", loop(80))
	w.db = testutil.NewTCPCounter(t, loop(5432))
	addr := func(u *testutil.Upstream) string { return u.Addr.Addr().String() }
	pols := map[string]string{}
	for name, text := range policies.EmbeddedPolicyFiles() {
		pols[name] = string(text)
	}
	w.s = e2e.PrepareSidecar(t, e2e.SidecarOptions{
		NoAgent:    true, // the agent is registered by firma run
		Policies:   pols, // firma's built-in posture, as a new installation has it
		Rules:      string(policies.EmbeddedRulesText()),
		UpstreamCA: ca.CertFile,
		AuditPath:  filepath.Join(t.TempDir(), "log", "audit.jsonl"),
		Resolve: map[string]string{
			"api.github.com": addr(w.github), "uploads.github.com": addr(w.github), "api.anthropic.com": addr(w.anthropic),
			"pypi.org": addr(w.pypi), "telemetry.example.net": addr(w.tele), "api.openai.com": addr(w.openai),
			"mirror.example.net": addr(w.mirror), "db.example.net": w.db.Addr.Addr().String(),
		},
		ExtraTOML: fmt.Sprintf(`
[sidecar.ca]
dir = %q

[sidecar.interceptor.https_mitm]
enabled = true
intercept_hosts = ["api.github.com", "uploads.github.com", "api.anthropic.com", "pypi.org", "telemetry.example.net", "api.openai.com"]
`, filepath.Join(t.TempDir(), "ca")),
	})
	w.s.Start(t)
	script, err := os.ReadFile("agent.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.s.Dir, "agent.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	w.env = append(testutil.CleanEnv(), "PATH="+filepath.Dir(w.s.Bin)+":"+os.Getenv("PATH"))
	return w
}

// sh runs one of the guide's command lines in the directory of firma.toml and returns its output
// and exit status.
func (w *world) sh(t *testing.T, line string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", line)
	cmd.Dir, cmd.Env = w.s.Dir, w.env
	out, err := cmd.CombinedOutput()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return string(out), code
}

// stepResults reads agent.sh's report: step → "ok" or "FAILED".
func stepResults(t *testing.T, out string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "ok" || f[0] == "FAILED") {
			got[strings.TrimSuffix(f[1], ":")] = f[0]
		}
	}
	return got
}

func coderDecisions(t *testing.T, s *e2e.Sidecar) []audit.Event {
	t.Helper()
	var out []audit.Event
	for _, ev := range s.Decisions(t) {
		if ev.Envelope != nil && ev.Envelope.Agent.AgentID == "coder" {
			out = append(out, ev)
		}
	}
	return out
}

// TestGuideFromMonitorToEnforce follows the guide: the agent runs in monitor mode and nothing it
// does is blocked, yet every request has a record of what enforce mode would have done; doctor says
// the agent is in monitor mode; suggest turns the log into files that validate; replay shows what
// they change; the sidecar enforces them, the same agent runs unhindered, and a new host and the
// excluded one are denied; and replay of the log under a stricter policy lists exactly the requests
// that policy denies.
//
// Departures, all test plumbing: fake upstreams on loopback addresses stand in for the agent's
// hosts; the sidecar's ports, cgroup and pin dir are the harness's; the doctor step runs while a
// second monitored run holds its registration; the config is edited and the sidecar restarted by
// the test, as the guide tells the operator to.
func TestGuideFromMonitorToEnforce(t *testing.T) {
	guide, err := os.ReadFile("../../docs/guides/from-monitor-to-enforce.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{stepMonitor, stepDoctor, stepTail, stepSuggest, stepValidate, stepReplay, stepEnforce, stepCI} {
		if !strings.Contains(string(guide), step) {
			t.Errorf("the guide does not say %q", step)
		}
	}
	w := newWorld(t)

	// Step 1: monitor mode. Every step of the agent works, and reached its upstream.
	out, code := w.sh(t, stepMonitor)
	for _, step := range agentSteps {
		if stepResults(t, out)[step] != "ok" {
			t.Errorf("monitor mode: step %s did not work (exit %d):\n%s\nsidecar:\n%s", step, code, out, w.s.Logs())
		}
	}
	if !strings.Contains(w.s.Logs(), "MONITOR MODE") {
		t.Error("the sidecar's log does not say the agent is in monitor mode")
	}
	seen := map[*testutil.Upstream]int{w.github: 3, w.anthropic: 1, w.pypi: 1, w.mirror: 2, w.tele: 1}
	for u, n := range seen {
		if got := len(u.Requests()); got != n {
			t.Errorf("%s saw %d requests in monitor mode, want %d", u.Name, got, n)
		}
	}
	if w.db.Conns() != 1 {
		t.Errorf("the database saw %d connections", w.db.Conns())
	}

	// Every request has a record with the outcome enforce mode would have given, and enforced:
	// false: the built-in policy permits the LLM provider only.
	decisions := coderDecisions(t, w.s)
	wantRecords := map[string]string{
		"GET api.github.com/repos/openfirma/firma": "DENY", "GET api.github.com/repos/openfirma/firma/issues": "DENY",
		"POST uploads.github.com/repos/openfirma/firma/releases/1/assets": "DENY",
		"POST api.anthropic.com/v1/messages":                              "ALLOW", "GET pypi.org/simple/requests": "DENY",
		" db.example.net:5432": "DENY", "GET mirror.example.net/debian/dists/stable/Release": "DENY",
		"GET mirror.example.net/debian/pool/main/c/curl.deb": "DENY", "POST telemetry.example.net/collect": "DENY",
	}
	for _, ev := range decisions {
		if d := ev.Decision; d.Enforced == nil || *d.Enforced {
			t.Errorf("record %d of the monitored agent lacks enforced: false: %+v", ev.Seq, d)
		}
		r := ev.Envelope.Intent.Resource
		key := r.Method + " " + r.Host + r.Path
		if want, ok := wantRecords[key]; ok {
			if ev.Decision.Outcome != want {
				t.Errorf("%s: recorded %s, enforce mode would %s", key, ev.Decision.Outcome, want)
			}
			delete(wantRecords, key)
		}
	}
	for key := range wantRecords {
		t.Errorf("no record of %q", key)
	}

	// doctor, while a monitored run is registered, names it.
	hold := exec.Command("bash", "-c", "firma run -c firma.toml --monitor --agent-id coder -- sh -c 'echo held; read x'")
	hold.Dir, hold.Env = w.s.Dir, w.env
	stdin, _ := hold.StdinPipe()
	holdOut := &testutil.SyncBuffer{}
	hold.Stdout, hold.Stderr = holdOut, holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(holdOut.String(), "held"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the held run did not start:\n%s", holdOut.String())
		}
	}
	out, _ = w.sh(t, stepDoctor)
	t.Logf("%s:\n%s", stepDoctor, out)
	stdin.Close()
	hold.Wait()
	if !strings.Contains(out, "sidecar.monitor") || !strings.Contains(out, "MONITOR MODE") || !strings.Contains(out, "coder (firma run --monitor, cgroup ") {
		t.Errorf("doctor does not name the monitored agent:\n%s", out)
	}

	// What enforce mode would have denied.
	out, code = w.sh(t, stepTail)
	t.Logf("%s:\n%s", stepTail, out)
	if code != 0 || !strings.Contains(out, "GET pypi.org/simple/requests") || strings.Contains(out, "api.anthropic.com/v1/messages") {
		t.Errorf("%s: exit %d\n%s", stepTail, code, out)
	}

	// Step 3: suggest, then validate.
	out, code = w.sh(t, stepSuggest)
	t.Logf("%s:\n%s", stepSuggest, out)
	if code != 0 || !strings.Contains(out, "wrote policy-coder/mapping-rules.toml and policy-coder/coder.cedar") {
		t.Fatalf("%s: exit %d\n%s", stepSuggest, code, out)
	}
	if out, code = w.sh(t, stepValidate); code != 0 {
		t.Fatalf("%s: exit %d\n%s", stepValidate, code, out)
	}
	cedar, _ := os.ReadFile(filepath.Join(w.s.Dir, "policy-coder", "coder.cedar"))
	rules, _ := os.ReadFile(filepath.Join(w.s.Dir, "policy-coder", "mapping-rules.toml"))
	t.Logf("policy-coder/mapping-rules.toml:\n%s\npolicy-coder/coder.cedar:\n%s", rules, cedar)

	// Step 4: replay the log under the suggestion: what monitor mode let through is newly allowed,
	// nothing is newly denied.
	out, code = w.sh(t, stepReplay)
	t.Logf("%s:\n%s", stepReplay, out)
	if code != 1 || !strings.Contains(out, "newly allowed: ") || strings.Contains(out, "newly denied") || !strings.Contains(out, "pypi.org") {
		t.Errorf("%s: exit %d\n%s", stepReplay, code, out)
	}

	// Step 5: enforce. The guide's edit of firma.toml, and a restart.
	w.s.Stop(t)
	cfg, _ := os.ReadFile(w.s.ConfigPath)
	text := string(cfg)
	for _, kv := range [][2]string{{"[sidecar.policy]\ndir = ", `"policy-coder"`}, {"rules_path = ", `"policy-coder/mapping-rules.toml"`}} {
		i := strings.Index(text, kv[0])
		end := strings.IndexByte(text[i+len(kv[0]):], '\n')
		text = text[:i+len(kv[0])] + kv[1] + text[i+len(kv[0])+end:]
	}
	if err := os.WriteFile(w.s.ConfigPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	w.s.Start(t)
	before := len(w.tele.Requests())
	out, _ = w.sh(t, stepEnforce)
	t.Logf("%s:\n%s", stepEnforce, out)
	got := stepResults(t, out)
	for _, step := range agentSteps {
		want := "ok"
		if step == "telemetry" {
			want = "FAILED"
		}
		if got[step] != want {
			t.Errorf("enforce mode: step %s %s, want %s:\n%s\nsidecar:\n%s", step, got[step], want, out, w.s.Logs())
		}
	}
	if n := len(w.tele.Requests()); n != before {
		t.Errorf("the excluded host got %d more requests under enforcement", n-before)
	}
	// A host the agent never used is denied: by name at DNS, and by its TLS server name when the
	// agent dials an address it knows.
	out, _ = w.sh(t, "firma run -c firma.toml --agent-id coder -- curl -sS --max-time 10 https://api.openai.com/v1/models; "+
		"firma run -c firma.toml --agent-id coder -- curl -sS --max-time 10 --resolve api.openai.com:443:"+w.openai.Addr.Addr().String()+" https://api.openai.com/v1/models")
	if w.openai.Conns() != 0 || strings.Contains(out, "hello from openai") {
		t.Errorf("the new host was reached (%d connections):\n%s", w.openai.Conns(), out)
	}
	var denials int
	for _, ev := range coderDecisions(t, w.s) {
		if strings.HasPrefix(ev.Envelope.Intent.Resource.Host, "api.openai.com") && ev.Decision.Outcome == "DENY" &&
			ev.Decision.Enforced == nil {
			denials++
		}
	}
	if denials < 2 {
		t.Errorf("%d enforced denials of api.openai.com recorded, want one at DNS and one for the request", denials)
	}

	// The policy permits looking up *.github.com; a request whose method is "DNS" is not a lookup,
	// and must not pass as one.
	before = len(w.github.Requests())
	out, _ = w.sh(t, "firma run -c firma.toml --agent-id coder -- curl -sS --max-time 10 -X DNS 'https://api.github.com/exfil?data=secret'")
	if n := len(w.github.Requests()); n != before || strings.Contains(out, "hello from github") {
		t.Errorf("an HTTP request with method DNS passed as a name lookup:\n%s", out)
	}

	// Step 6: a stricter policy, checked in CI against the log: exactly the requests it denies that
	// the policy in force allows — the package index, once in each run.
	strict := filepath.Join(w.s.Dir, "policy-strict")
	if err := os.Mkdir(strict, 0o755); err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(cedar), `@id("coder: HTTP package.install pypi.org/simple/requests")`)
	if i < 0 {
		t.Fatalf("no permit for the package index in:\n%s", cedar)
	}
	end := strings.Index(string(cedar[i:]), "};\n") + 3
	if err := os.WriteFile(filepath.Join(strict, "coder.cedar"), append(cedar[:i:i], cedar[i+end:]...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = w.sh(t, stepCI)
	t.Logf("%s:\n%s", stepCI, out)
	var rep policies.ReplayReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%s: %v\n%s", stepCI, err, out)
	}
	if code != 1 || len(rep.Changes) != 1 {
		t.Fatalf("%s: exit %d, changes %+v", stepCI, code, rep.Changes)
	}
	if g := rep.Changes[0]; g.Change != policies.NewlyDenied || g.Host != "pypi.org" || g.ActionClass != "package.install" || g.Count != 2 ||
		g.Example.Request != "GET https://pypi.org/simple/requests" {
		t.Errorf("%s: %+v", stepCI, g)
	}
}
