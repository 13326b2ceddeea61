package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/policies"
)

// learnLog writes an audit log as the sidecar would: the judge, deciding a monitored agent's
// intents under the policy in dir (a permit for ok.test only) and catch-all rules, then a rotation,
// then an enforced agent's. It returns the live file.
func learnLog(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(`permit (principal, action, resource) when { resource.host == "ok.test" };`), 0o644)
	os.WriteFile(filepath.Join(dir, "rules.toml"), []byte("[[rules]]\nmethod = \"CONNECT\"\nhost = \"*\"\naction_class = \"communication.external.send\"\n"), 0o644)
	eng, err := policies.New(policies.Config{Dir: dir}, policies.MappingConfig{RulesPath: filepath.Join(dir, "rules.toml"), DefaultProtected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, "audit.jsonl")
	w, err := audit.Open(audit.Config{FilePath: live}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	j := judge.New(judge.Options{Engine: eng, Audit: w, Log: zerolog.Nop()})
	flow := func(agent string, monitor bool) *judge.Flow {
		return &judge.Flow{AgentID: agent, SessionID: "s", Monitor: monitor, Cgroup: "/a", PID: 7, Exe: "/usr/bin/curl",
			OrigDst: netip.MustParseAddrPort("127.0.0.9:443"), Start: time.Now()}
	}
	http := func(method, host, path string) judge.Intent {
		return judge.Intent{Method: method, Host: host, Port: 443, Path: path, Transport: "https", Mode: judge.ModeMITM, SNI: host}
	}
	mon := flow("scripted", true)
	for _, in := range []judge.Intent{
		http("GET", "a.svc.test", "/v1/items?page=1"), http("GET", "a.svc.test", "/v1/items/2"), http("GET", "b.svc.test", "/v1/users"),
		http("POST", "b.svc.test", "/v1/upload"), http("POST", "b.svc.test", "/v1/upload"),
		{Method: policies.MethodConnect, Host: "ok.test", Port: 443, Transport: "tls", Mode: judge.ModeConnect},
		{Method: policies.MethodDNS, Host: "a.svc.test", Port: 53, Transport: "dns", Mode: judge.ModeDNS, QType: "A"},
		http("GET", "tracker.test", "/collect"),
		{Method: policies.MethodConnect, Host: "x.test", Port: 443, Transport: "tls", Mode: judge.ModeConnect, Refuse: judge.ReasonBadHello},
	} {
		j.Decide(context.Background(), mon, in)
	}
	if err := w.Rotate(); err != nil {
		t.Fatal(err)
	}
	j.Decide(context.Background(), flow("other", false), http("GET", "a.svc.test", "/v1/items"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return live
}

func TestPolicySuggestAndReplay(t *testing.T) {
	live := learnLog(t)
	files, _ := audit.Files(live)
	if len(files) != 2 {
		t.Fatalf("log files %v", files)
	}
	out := filepath.Join(t.TempDir(), "suggested")
	code, stdout, stderr := runPolicy(t, append([]string{"suggest", "--agent", "scripted", "--exclude", "tracker.test", "--out", out}, files...)...)
	if code != 0 || !strings.Contains(stdout, "7 of agent scripted's 8 decision records covered, 1 excluded") {
		t.Fatalf("suggest: %d\n%s%s", code, stdout, stderr)
	}
	rules := filepath.Join(out, "mapping-rules.toml")
	if code, stdout, stderr := runPolicy(t, "validate", out, rules); code != 0 || !strings.Contains(stdout, "ok  "+out+": 5 policies") {
		t.Errorf("validate: %d\n%s%s", code, stdout, stderr)
	}
	first, _ := os.ReadFile(filepath.Join(out, "scripted.cedar"))
	// Again, over the previous suggestion: the same bytes.
	if code, _, stderr := runPolicy(t, append([]string{"suggest", "--agent", "scripted", "--exclude", "tracker.test", "--out", out}, files[1], files[0])...); code != 0 {
		t.Fatalf("suggest again: %s", stderr)
	}
	if again, _ := os.ReadFile(filepath.Join(out, "scripted.cedar")); string(again) != string(first) {
		t.Errorf("a second run wrote other bytes:\n%s", again)
	}

	// The same log on stdin ("-"), as a journal export would come: the same suggestion.
	var joined []byte
	for _, f := range files {
		b, _ := os.ReadFile(f)
		joined = append(joined, b...)
	}
	auditStdin = strings.NewReader(string(joined))
	defer func() { auditStdin = os.Stdin }()
	fromStdin := filepath.Join(t.TempDir(), "stdin")
	if code, _, stderr := runPolicy(t, "suggest", "--agent", "scripted", "--exclude", "tracker.test", "--out", fromStdin, "-"); code != 0 {
		t.Fatalf("suggest -: %s", stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(fromStdin, "scripted.cedar")); string(got) != string(first) {
		t.Errorf("from stdin, another suggestion:\n%s", got)
	}

	// Under the suggestion, nothing the agent did is newly denied; what monitor mode let through
	// is newly allowed. The sidecar's own refusal is not replayed.
	code, stdout, stderr = runPolicy(t, append([]string{"replay", "--policy", out, "--rules", rules, "--agent", "scripted", "--json"}, files...)...)
	var rep policies.ReplayReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("replay --json: %v\n%s%s", err, stdout, stderr)
	}
	if code != 1 || rep.Decisions != 9 || rep.Replayed != 8 || len(rep.NotReplayed) != 1 ||
		!strings.Contains(rep.NotReplayed[0].Reason, "own refusal ("+judge.ReasonBadHello+")") {
		t.Errorf("replay under the suggestion: exit %d %+v", code, rep)
	}
	for _, g := range rep.Changes {
		if g.Change != policies.NewlyAllowed {
			t.Errorf("under the suggestion: %+v", g)
		}
	}

	// A stricter candidate, against the suggestion as baseline: exactly the uploads.
	strict := filepath.Join(t.TempDir(), "strict")
	os.Mkdir(strict, 0o755)
	text := string(first)
	i := strings.Index(text, `@id("scripted: HTTP communication.external.send *.svc.test/v1/upload")`)
	end := strings.Index(text[i:], "};\n")
	os.WriteFile(filepath.Join(strict, "scripted.cedar"), []byte(text[:i]+text[i+end+3:]), 0o644)
	code, stdout, _ = runPolicy(t, append([]string{"replay", "--policy", strict, "--rules", rules, "--baseline-policy", out}, files...)...)
	if code != 1 || !strings.Contains(stdout, "newly denied: 2 decisions\n  2      b.svc.test  communication.external.send  (agents: scripted)") ||
		!strings.Contains(stdout, "POST https://b.svc.test/v1/upload") || strings.Contains(stdout, "newly allowed") ||
		!strings.Contains(stdout, "2 decisions would change") {
		t.Errorf("stricter: exit %d\n%s", code, stdout)
	}
	// The same policy as the baseline: nothing changes, exit 0.
	code, stdout, _ = runPolicy(t, append([]string{"replay", "--policy", out, "--rules", rules, "--baseline-policy", out}, files...)...)
	if code != 0 || !strings.Contains(stdout, "nothing would change") {
		t.Errorf("same policy: exit %d\n%s", code, stdout)
	}
	// --strict: a record that could not be replayed fails too.
	if code, _, _ = runPolicy(t, append([]string{"replay", "--policy", out, "--rules", rules, "--baseline-policy", out, "--strict"}, files...)...); code != 1 {
		t.Errorf("--strict with a sidecar refusal: exit %d", code)
	}
}

// Usage mistakes and inputs replay cannot run on exit 2; suggest never replaces a file it did not
// write.
func TestPolicyLearnErrors(t *testing.T) {
	live := learnLog(t)
	t.Setenv(configEnv, "") // and no /etc/firma/firma.toml: nothing to fall back on
	for _, args := range [][]string{
		{"replay", live}, // no policy, no -c
		{"replay", "--policy", "nope", "--rules", "nope", live}, // a policy that does not load
		{"replay", "--policy", t.TempDir(), "--rules", "../../policies/default/mapping-rules.toml", filepath.Join(t.TempDir(), "missing.jsonl")},
		{"replay", "--policy", t.TempDir(), "--rules", "../../policies/default/mapping-rules.toml", "--format", "xml", live},
		{"suggest", live}, // no --agent
		{"suggest", "--agent", "a", "--exclude", "*", live},
	} {
		if code, stdout, stderr := runPolicy(t, args...); code != 2 {
			t.Errorf("%v: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "mapping-rules.toml"), []byte("# mine\n"), 0o644)
	code, _, stderr := runPolicy(t, "suggest", "--agent", "scripted", "--out", out, live)
	if code != 1 || !strings.Contains(stderr, "was not written by firma policy suggest") {
		t.Errorf("overwriting the operator's file: %d %s", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "mapping-rules.toml")); string(b) != "# mine\n" {
		t.Error("the operator's file was replaced")
	}
	// Another agent's suggestion is not replaced either.
	other := t.TempDir()
	if code, _, stderr := runPolicy(t, "suggest", "--agent", "scripted", "--out", other, live); code != 0 {
		t.Fatal(stderr)
	}
	code, _, stderr = runPolicy(t, "suggest", "--agent", "other", "--out", other, live)
	if code != 1 || !strings.Contains(stderr, `was suggested for agent "scripted": not replacing it with agent "other"'s`) {
		t.Errorf("replacing another agent's suggestion: %d %s", code, stderr)
	}
}

// With -c and no AUDIT, suggest reads the configured log, rotations included.
func TestPolicySuggestFromConfig(t *testing.T) {
	live := learnLog(t)
	cfg := filepath.Join(t.TempDir(), "firma.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[sidecar.audit]\nfile_path = %q\n", live)), 0o644)
	out := t.TempDir()
	code, stdout, stderr := runPolicy(t, "suggest", "-c", cfg, "--agent", "other", "--include-denied", "--out", out)
	if code != 0 || !strings.Contains(stdout, "1 of agent other's 1 decision records covered") {
		t.Errorf("%d\n%s%s", code, stdout, stderr)
	}
}
