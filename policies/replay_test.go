package policies

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// replayDir writes a policy dir (name → text) and rules, and loads them as the sidecar would.
func replayEngine(t *testing.T, rules string, files map[string]string) *Engine {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rulesPath := filepath.Join(dir, "rules.toml")
	if err := os.WriteFile(rulesPath, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Dir: dir}, MappingConfig{RulesPath: rulesPath, DefaultProtected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

const replayRules = `[[rules]]
method = "*"
host = "*"
action_class = "communication.external.send"

[[rules]]
method = "GET"
host = "*"
action_class = "communication.external.read"
`

func replay(t *testing.T, e *Engine, opt ReplayOptions, in ...Observed) *ReplayReport {
	t.Helper()
	r := NewReplayer(e, opt)
	for i, o := range in {
		o.Seq, o.Where = uint64(i+1), fmt.Sprintf("audit.jsonl:%d", i+1)
		if err := r.Add(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	return r.Report()
}

// A stricter candidate: what was allowed and is refused now is listed by host and class, with a
// count and the first record as example; what stays the same is only counted.
func TestReplayAgainstRecordedOutcomes(t *testing.T) {
	var in []Observed
	in = append(in, observations("a", Allow, "communication.external.read", "3 GET https://api.x.test/v1/items")...)
	in = append(in, observations("a", Allow, "communication.external.send", "2 POST https://api.x.test/v1/upload", "tls tunnel.test:443")...)
	in = append(in, observations("a", Deny, "", "GET https://new.test/")...)
	in = append(in, observations("b", Allow, "communication.external.send", "POST https://api.x.test/v1/upload")...)
	e := replayEngine(t, replayRules, map[string]string{"p.cedar": `
permit (principal, action == Firma::Action::"communication.external.read", resource)
when { ["api.x.test", "new.test"].contains(resource.host) };
`})
	rep := replay(t, e, ReplayOptions{}, in...)
	if rep.Decisions != 8 || rep.Replayed != 8 || rep.Unchanged != 3 || rep.Changed() != 5 || rep.Against != "recorded outcomes" {
		t.Fatalf("report %+v", rep)
	}
	want := []struct {
		change      Change
		host, class string
		count       int
		agents      string
		example     string
	}{
		{NewlyDenied, "api.x.test", "communication.external.send", 3, "a,b", "audit.jsonl:4 POST https://api.x.test/v1/upload ALLOW→DENY"},
		{NewlyDenied, "tunnel.test", "communication.external.send", 1, "a", "audit.jsonl:6 TLS tunnel.test:443 ALLOW→DENY"},
		{NewlyAllowed, "new.test", "communication.external.read", 1, "a", "audit.jsonl:7 GET https://new.test/ DENY→ALLOW"},
	}
	if len(rep.Changes) != len(want) {
		t.Fatalf("changes %+v", rep.Changes)
	}
	for i, w := range want {
		g := rep.Changes[i]
		ex := fmt.Sprintf("%s %s %s→%s", g.Example.Where, g.Example.Request, g.Example.Was, g.Example.Now)
		if g.Change != w.change || g.Host != w.host || g.ActionClass != w.class || g.Count != w.count || strings.Join(g.Agents, ",") != w.agents || ex != w.example {
			t.Errorf("change %d: %+v (%s), want %+v", i, g, ex, w)
		}
	}
	if g := rep.Changes[0]; g.Example.NowReason != ReasonNoPermit || g.Example.Agent != "a" {
		t.Errorf("example %+v", g.Example)
	}

	// The same policy as recorded: nothing changes.
	same := replay(t, e, ReplayOptions{}, replay2(t, e, in)...)
	if same.Changed() != 0 || same.Unchanged != 8 {
		t.Errorf("replaying decisions under the policy that made them: %+v", same.Changes)
	}
}

// replay2 gives in the outcomes e decides, as if e had recorded them.
func replay2(t *testing.T, e *Engine, in []Observed) []Observed {
	t.Helper()
	out := make([]Observed, len(in))
	for i, o := range in {
		d, err := e.Decide(context.Background(), o.Request)
		if err != nil {
			t.Fatal(err)
		}
		o.Outcome, o.Reason, o.ActionClass = d.Outcome, d.Reason, d.ActionClass
		out[i] = o
	}
	return out
}

// With a baseline, both policies judge every record; the recorded outcomes do not matter.
func TestReplayAgainstABaseline(t *testing.T) {
	in := observations("a", Deny, "", "GET https://api.x.test/v1/items", "POST https://api.x.test/v1/upload")
	base := replayEngine(t, replayRules, map[string]string{"p.cedar": `permit (principal, action, resource) when { resource.host == "api.x.test" };`})
	cand := replayEngine(t, replayRules, map[string]string{"p.cedar": `permit (principal, action == Firma::Action::"communication.external.read", resource);`})
	rep := replay(t, cand, ReplayOptions{Baseline: base}, in...)
	if rep.Against != "baseline policy" || rep.Changed() != 1 || len(rep.Changes) != 1 || rep.Changes[0].Change != NewlyDenied ||
		rep.Changes[0].Example.Request != "POST https://api.x.test/v1/upload" || rep.Changes[0].Example.Was != Allow {
		t.Errorf("report %+v", rep)
	}
}

// A decision whose policies read what the record does not carry is not replayed, and says why; a
// record that carries a zero body size needs no body. The sidecar's own refusals are counted apart.
func TestReplayReportsWhatCannotBeReplayed(t *testing.T) {
	e := replayEngine(t, replayRules, map[string]string{"p.cedar": `
permit (principal, action == Firma::Action::"communication.external.send", resource)
when { context.json has model && context.json.model == "small" };
permit (principal, action == Firma::Action::"communication.external.read", resource)
when { context.query_params.contains("page") };
`})
	post := obs("a", "POST https://api.x.test/v1/chat", Allow, "")
	empty := post
	empty.Carried.BodySize = true
	get := obs("a", "GET https://api.x.test/v1/items?page=2", Allow, "")
	withQuery := get
	withQuery.Carried.Query = true
	r := NewReplayer(e, ReplayOptions{})
	for _, o := range []Observed{post, post, empty, get, withQuery} {
		o.Where = "audit.jsonl:" + o.Request.Method
		if err := r.Add(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	r.Skip("audit.jsonl:9", "the sidecar's own refusal")
	rep := r.Report()
	if rep.Decisions != 6 || rep.Replayed != 2 || len(rep.NotReplayed) != 3 {
		t.Fatalf("report %+v", rep)
	}
	skips := map[string]int{}
	for _, s := range rep.NotReplayed {
		skips[s.Reason] = s.Count
	}
	if skips["policies on communication.external.send read context.json (the body), which the record does not carry"] != 2 ||
		skips["policies on communication.external.read read context.query, which the record does not carry"] != 1 ||
		skips["the sidecar's own refusal"] != 1 {
		t.Errorf("not replayed: %+v", rep.NotReplayed)
	}
	// The empty body is judged (json absent: the permit does not apply) and the query is read.
	if rep.Changed() != 1 || rep.Changes[0].Example.Request != "POST https://api.x.test/v1/chat" || rep.Unchanged != 1 {
		t.Errorf("changes %+v", rep.Changes)
	}
}

// Session state is rebuilt from the replayed decisions in order: after a denial, a policy that
// forbids sessions with denials refuses the rest of that session, and only that session.
func TestReplayRebuildsSessions(t *testing.T) {
	e := replayEngine(t, replayRules, map[string]string{"p.cedar": `
permit (principal, action == Firma::Action::"communication.external.read", resource);
forbid (principal, action, resource) when { context.deny_count > 0 };
`})
	in := observations("a", Allow, "", "GET https://x.test/1", "POST https://x.test/2", "GET https://x.test/3")
	other := obs("a", "GET https://x.test/4", Allow, "")
	other.Request.SessionID = "s2"
	rep := replay(t, e, ReplayOptions{}, append(in, other)...)
	if rep.Changed() != 2 || rep.Unchanged != 2 || rep.Changes[0].Example.Request != "GET https://x.test/3" ||
		rep.Changes[1].Example.Request != "POST https://x.test/2" {
		t.Errorf("report %+v", rep.Changes)
	}
}

// A git push is classified by its body, which no record carries.
func TestReplayGitPushIsNotReplayed(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(`permit (principal, action, resource);`), 0o644)
	e, err := New(Config{Dir: dir, Git: GitConfig{Hosts: []string{"git.test"}}}, MappingConfig{DefaultProtected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	rep := replay(t, e, ReplayOptions{}, obs("a", "POST https://git.test/o/r.git/git-receive-pack", Allow, "code.write"),
		obs("a", "GET https://git.test/o/r.git/info/refs", Allow, "code.read"))
	if rep.Replayed != 0 || len(rep.NotReplayed) != 2 || !strings.Contains(rep.NotReplayed[0].Reason+rep.NotReplayed[1].Reason, "a git push") {
		t.Errorf("report %+v", rep)
	}
}

func TestCompareOutcomes(t *testing.T) {
	for _, c := range []struct {
		was, now Outcome
		change   Change
		changed  bool
	}{
		{Allow, Allow, "", false}, {Allow, Deny, NewlyDenied, true}, {Passthrough, StepUp, NewlyDenied, true},
		{Deny, Allow, NewlyAllowed, true}, {Defer, Modify, NewlyAllowed, true}, {Allow, Modify, OutcomeChanged, true},
		{Deny, StepUp, OutcomeChanged, true}, {Deny, Deny, "", false},
	} {
		if ch, ok := compare(c.was, c.now); ch != c.change || ok != c.changed {
			t.Errorf("%s→%s: %q %v", c.was, c.now, ch, ok)
		}
	}
}
