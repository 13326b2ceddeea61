package policies

import (
	"bytes"
	"context"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of the suggest tests")

// obs builds an observed decision of agent from "METHOD target" where target is a URL
// ("https://a.example.com/v1/x", a port after the host as in a URL), "tls host:port",
// "tcp host:port" or "dns name".
func obs(agent, spec string, outcome Outcome, class string) Observed {
	method, target, _ := strings.Cut(spec, " ")
	o := Observed{Where: "test", Outcome: outcome, ActionClass: class,
		Request: Request{AgentID: agent, SessionID: "s1", Exe: "/usr/bin/curl", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}}
	switch method {
	case "tls", "tcp":
		o.Request.Method, o.Request.Transport, o.Request.Host = MethodConnect, method, target
	case "dns":
		o.Request.Method, o.Request.Transport, o.Request.Host, o.Request.Port = MethodDNS, "dns", target, 53
	default:
		scheme, rest, _ := strings.Cut(target, "://")
		host, path, _ := strings.Cut(rest, "/")
		o.Request.Method, o.Request.Transport, o.Request.Host, o.Request.Path = method, scheme, host, "/"+path
	}
	return o
}

// observations repeats specs: "3 GET https://…" is three records.
func observations(agent string, outcome Outcome, class string, specs ...string) []Observed {
	var out []Observed
	for _, s := range specs {
		n := 1
		if c, rest, ok := strings.Cut(s, " "); ok && c != "" && c[0] >= '0' && c[0] <= '9' {
			n, s = int(c[0]-'0'), rest
		}
		for range n {
			out = append(out, obs(agent, s, outcome, class))
		}
	}
	return out
}

// suggestFiles runs a Suggester over observations and writes its files to a new dir, as
// `firma policy suggest --out DIR` does.
func suggestFiles(t *testing.T, opt SuggestOptions, in ...Observed) (*Suggestion, string) {
	t.Helper()
	s, err := NewSuggester(opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range in {
		s.Add(o)
	}
	out, err := s.Suggest()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, RulesFileName), out.Rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, out.PolicyFile), out.Policy, 0o644); err != nil {
		t.Fatal(err)
	}
	return out, dir
}

// engineFor loads a suggestion's files as the sidecar would, with default_protected.
func engineFor(t *testing.T, dir string) *Engine {
	t.Helper()
	e, err := New(Config{Dir: dir}, MappingConfig{RulesPath: filepath.Join(dir, RulesFileName), DefaultProtected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// allowed reports whether e allows agent's intent spec.
func allowed(t *testing.T, e *Engine, agent, spec string) (bool, Decision) {
	t.Helper()
	d, err := e.Decide(context.Background(), obs(agent, spec, Allow, "").Request)
	if err != nil {
		t.Fatal(err)
	}
	return d.Outcome.Allowed(), d
}

// scriptedAgent is what the e2e's scripted agent does, in monitor mode under a policy that
// permits none of it (and a rule set that classifies only the tunnel).
func scriptedAgent() []Observed {
	in := observations("scripted", Deny, "",
		"3 GET https://a.svc.test/v1/items", "GET https://a.svc.test/v1/items/2", "GET https://b.svc.test/v1/users",
		"2 POST https://b.svc.test/v1/upload", "GET http://plain.test/status",
		"2 dns a.svc.test", "dns b.svc.test", "dns plain.test", "dns tunnel.test",
		"GET https://tracker.test/collect", "dns tracker.test")
	in = append(in, observations("scripted", Allow, "communication.external.send", "tls tunnel.test:443")...)
	in = append(in, observations("someone-else", Deny, "", "GET https://other.test/x")...)
	return in
}

// The suggestion for the scripted agent: golden files (so the format is reviewed), files that
// load as the sidecar loads them, that allow every intent seen (including what was only let
// through by monitor mode), and nothing excluded, new, or outside the generalization.
func TestSuggestScriptedAgent(t *testing.T) {
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "scripted", Exclude: []string{"tracker.test"}}, scriptedAgent()...)
	golden(t, "testdata/suggest/scripted.mapping-rules.toml", out.Rules)
	golden(t, "testdata/suggest/scripted.cedar", out.Policy)
	if out.PolicyFile != "scripted.cedar" || out.Records != 16 || out.Covered != 14 || out.Excluded != 2 || out.Left != 0 {
		t.Errorf("suggestion %s: %d records, %d covered, %d excluded, %d left", out.PolicyFile, out.Records, out.Covered, out.Excluded, out.Left)
	}
	e := engineFor(t, dir)
	for _, o := range scriptedAgent() {
		if o.Request.AgentID != "scripted" {
			continue
		}
		d, err := e.Decide(context.Background(), o.Request)
		if err != nil {
			t.Fatal(err)
		}
		excluded := strings.Contains(o.Request.Host, "tracker")
		if d.Outcome.Allowed() == excluded {
			t.Errorf("%s: %s (%s)", o.Describe(), d.Outcome, d.Reason)
		}
	}
	for spec, want := range map[string]bool{
		"GET https://c.svc.test/v1/anything":  true,  // the one-label wildcard and the /v1/* prefix
		"dns c.svc.test":                      true,  // lookups of the wildcard's names
		"GET https://x.a.svc.test/v1/items":   false, // one more label than the wildcard
		"GET https://svc.test/v1/items":       false, // the parent itself
		"GET https://a.svc.test/v2/items":     false, // outside the prefix
		"GET https://a.svc.test/v1":           false, // the prefix itself was never seen
		"DELETE https://a.svc.test/v1/items":  false, // a method not seen there
		"GET https://a.svc.test:8443/v1/item": false, // another port
		"POST https://b.svc.test/v1/upload/x": false, // the lone POST path stays exact
		"GET http://plain.test/status":        true,
		"GET http://plain.test/other":         false,
		"tls tunnel.test:443":                 true,
		"tls tunnel.test:8443":                false,
		"tcp tunnel.test:22":                  false,
		"tls a.svc.test:443":                  false, // seen only as HTTP requests inside MITM
		"GET https://other.test/x":            false, // another agent's host
		"GET https://tracker.test/collect":    false,
		"dns tracker.test":                    false,
		"GET https://new.test/":               false,
	} {
		if got, d := allowed(t, e, "scripted", spec); got != want {
			t.Errorf("%s: allowed %v, want %v (%s %s %v)", spec, got, want, d.Outcome, d.Reason, d.MatchedPolicies)
		}
	}
	if got, _ := allowed(t, e, "someone-else", "GET https://a.svc.test/v1/items"); got {
		t.Error("the suggestion permits another agent")
	}
	if d := mustDecide(t, e, "scripted", "GET https://tracker.test/collect"); d.Outcome != Deny || len(d.MatchedPolicies) != 1 ||
		d.MatchedPolicies[0] != "scripted: excluded tracker.test" {
		t.Errorf("excluded host: %s %v", d.Outcome, d.MatchedPolicies)
	}
}

func mustDecide(t *testing.T, e *Engine, agent, spec string) Decision {
	t.Helper()
	_, d := allowed(t, e, agent, spec)
	return d
}

// golden compares got with a file under testdata, or rewrites it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -run %s -update rewrites it); got:\n%s", path, t.Name(), got)
	}
}

// The same records in any order give the same bytes.
func TestSuggestIsDeterministic(t *testing.T) {
	in := scriptedAgent()
	first, _ := suggestFiles(t, SuggestOptions{AgentID: "scripted", Exclude: []string{"tracker.test"}}, in...)
	for i := range 5 {
		r := rand.New(rand.NewPCG(uint64(i), 7))
		r.Shuffle(len(in), func(a, b int) { in[a], in[b] = in[b], in[a] })
		again, _ := suggestFiles(t, SuggestOptions{AgentID: "scripted", Exclude: []string{"tracker.test"}}, in...)
		if !bytes.Equal(first.Rules, again.Rules) || !bytes.Equal(first.Policy, again.Policy) {
			t.Fatalf("shuffled input, different output:\n%s\n%s", again.Rules, again.Policy)
		}
	}
}

// Siblings group under a registrable parent only: never into a wildcard over a public suffix, ICANN
// (co.uk) or private (github.io), nor over IP literals or one-label names.
func TestSuggestHostGroupingStopsAtPublicSuffixes(t *testing.T) {
	in := observations("a", Deny, "",
		"GET https://a.co.uk/", "GET https://b.co.uk/",
		"GET https://x.github.io/", "GET https://y.github.io/",
		"GET https://p.example.co.uk/", "GET https://q.example.co.uk/",
		"GET https://one.test/", "GET https://two.test/",
		"GET http://127.0.0.2/", "GET http://127.0.0.3/",
		"GET https://intranet/", "GET https://wiki/")
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "a"}, in...)
	rules := string(out.Rules)
	for _, want := range []string{`"a.co.uk"`, `"b.co.uk"`, `"x.github.io"`, `"y.github.io"`, `"*.example.co.uk"`,
		`"one.test"`, `"127.0.0.2"`, `"intranet"`} {
		if !strings.Contains(rules, "host = "+want) {
			t.Errorf("no rule for host %s", want)
		}
	}
	for _, bad := range []string{`"*.co.uk"`, `"*.github.io"`, `"*.test"`, `"*.uk"`, `"*.io"`} {
		if strings.Contains(rules, bad) {
			t.Errorf("a wildcard over a public suffix: %s\n%s", bad, rules)
		}
	}
	e := engineFor(t, dir)
	if ok, _ := allowed(t, e, "a", "GET https://c.co.uk/"); ok {
		t.Error("c.co.uk allowed")
	}
	if ok, _ := allowed(t, e, "a", "GET https://r.example.co.uk/"); !ok {
		t.Error("r.example.co.uk not allowed by *.example.co.uk")
	}
}

// Classes: the record's class when the rules in force gave one (the most frequent when records
// disagree), else a heuristic from the registry, said so in a comment.
func TestSuggestActionClasses(t *testing.T) {
	var in []Observed
	in = append(in, observations("a", Allow, "model.inference.chat", "3 POST https://api.llm.test/v1/messages")...)
	in = append(in, observations("a", Allow, "communication.external.send", "POST https://api.llm.test/v1/messages")...)
	in = append(in, observations("a", Deny, "", "GET https://pkgs.registry.test/foo",
		"POST https://git.test/org/repo.git/git-upload-pack", "POST https://git.test/org/repo.git/git-receive-pack",
		"POST https://api.other.test/v1/chat/completions", "POST https://api.other.test/v1/embeddings",
		"tcp db.test:5432", "tls mail.test:465", "PUT https://files.test/x")...)
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "a"}, in...)
	rs, err := LoadRules(filepath.Join(dir, RulesFileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	for spec, want := range map[string]string{
		"POST https://api.llm.test/v1/messages":               "model.inference.chat",
		"GET https://pkgs.registry.test/foo":                  "package.install",
		"POST https://git.test/org/repo.git/git-upload-pack":  "code.read",
		"POST https://git.test/org/repo.git/git-receive-pack": "code.write",
		"POST https://api.other.test/v1/chat/completions":     "model.inference.chat",
		"POST https://api.other.test/v1/embeddings":           "model.inference.embedding",
		"tcp db.test:5432":                                    "network.connect",
		"tls mail.test:465":                                   "communication.external.send",
		"PUT https://files.test/x":                            "communication.external.send",
	} {
		r := obs("a", spec, Allow, "").Request
		got, err := rs.Classify(r.Method, r.Host, r.Path)
		if err != nil || got == nil || got.ActionClass != want {
			t.Errorf("%s: %v %v, want %s", spec, got, err, want)
		}
	}
	if !strings.Contains(string(out.Rules), "# action class as the rules in force classified it\n[[rules]]\nmethod = \"POST\"\nhost = \"api.llm.test\"") {
		t.Errorf("the recorded class is not said to be recorded:\n%s", out.Rules)
	}
	if !strings.Contains(string(out.Rules), "action class chosen by suggest (raw TCP)") {
		t.Errorf("a heuristic class is not said to be one:\n%s", out.Rules)
	}

	// A schema without the classes suggest chooses from: an error naming the intent.
	schema, err := ParseSchema("tiny.cedarschema", []byte(`namespace Firma {
    entity Agent;
    entity Resource { host: String, path: String, method: String, port: Long, provider?: String };
    entity Query tags Set<String>;
    entity Headers tags String;
    entity Json tags String;
    entity Counts tags Long;
    type Context = {
        session_id: String, timestamp_ms: Long, raw_transport: String, pid: Long, exe: String, uid: Long, cgroup: String,
        body_size: Long, content_type: String, query: Query, query_params: Set<String>, headers: Headers, json: Json,
        git_service: String, git_owner: String, git_repo: String, git_refs: Set<String>, git_delete: Bool, git_force: Bool,
        action_count: Long, deny_count: Long, prior_action_classes: Set<String>, last_resource: String,
        session_duration_s: Long, actions_last_minute: Counts, actions_last_hour: Counts,
    };
    action "only.this" appliesTo { principal: Agent, resource: Resource, context: Context };
}`))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := NewSuggester(SuggestOptions{AgentID: "a", Schema: schema})
	s.Add(obs("a", "tcp db.test:5432", Deny, ""))
	if _, err := s.Suggest(); err == nil || !strings.Contains(err.Error(), "TCP db.test:5432") {
		t.Errorf("no class in the schema: %v", err)
	}
}

// Two classes under one generalized path: the cells fall back to exact paths, and each intent keeps
// its class.
func TestSuggestConflictingClassesStayExact(t *testing.T) {
	var in []Observed
	in = append(in, observations("a", Allow, "model.inference.chat", "GET https://api.x.test/v1/a", "GET https://api.x.test/v1/b")...)
	in = append(in, observations("a", Allow, "model.inference.embedding", "GET https://api.x.test/v1/c", "GET https://api.x.test/v1/d")...)
	// And across siblings: the same path, two classes on two hosts.
	in = append(in, observations("a", Allow, "code.read", "GET https://one.y.test/repo")...)
	in = append(in, observations("a", Allow, "code.write", "GET https://two.y.test/repo")...)
	_, dir := suggestFiles(t, SuggestOptions{AgentID: "a"}, in...)
	rs, err := LoadRules(filepath.Join(dir, RulesFileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range in {
		r, _ := rs.Classify(o.Request.Method, o.Request.Host, o.Request.Path)
		if r == nil || r.ActionClass != o.ActionClass {
			t.Errorf("%s: classified %v, recorded %s", o.Describe(), r, o.ActionClass)
		}
	}
}

// What the agent names itself — paths, programs — cannot break out of a string or a comment.
func TestSuggestEscapesWhatTheAgentNames(t *testing.T) {
	o := obs("a", `GET https://x.test/p"a\th*x`, Deny, "")
	o.Request.Exe = "/tmp/evil\n[[rules]]\nmethod = \"*\"\nhost = \"*\"\naction_class = \"web.request\"\n\u202e"
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "a"}, o)
	if strings.Count(string(out.Rules), "[[rules]]") != 1 || bytes.Contains(out.Policy, []byte("\n[[rules]]")) || bytes.ContainsRune(out.Policy, '\u202e') {
		t.Errorf("the agent's exe name escaped its comment:\n%s\n%s", out.Rules, out.Policy)
	}
	e := engineFor(t, dir)
	if ok, d := allowed(t, e, "a", `GET https://x.test/p"a\th*x`); !ok {
		t.Errorf("the path itself: %s %s", d.Outcome, d.Reason)
	}
	// The rule's '*' is a glob, but the permit compares exactly: no other path gets through.
	if ok, _ := allowed(t, e, "a", `GET https://x.test/p"a\thANYTHINGx`); ok {
		t.Error("a literal '*' in the path became a wildcard in the permit")
	}
}

// By default what enforce mode denied stays out; --include-denied covers it. Other agents'
// records are ignored, and what the policy in force forbade is flagged.
func TestSuggestEnforcedDenialsAndForbids(t *testing.T) {
	denied := obs("a", "GET https://blocked.test/x", Deny, "")
	denied.Enforced = true
	forbidden := obs("a", "GET https://pastebin.test/x", Deny, "communication.external.send")
	forbidden.Policies = []string{"default-forbid-exfiltration-services"}
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "a"}, denied, forbidden)
	if out.Left != 1 || out.Covered != 1 {
		t.Errorf("left %d, covered %d", out.Left, out.Covered)
	}
	if ok, _ := allowed(t, engineFor(t, dir), "a", "GET https://blocked.test/x"); ok {
		t.Error("an enforce-mode denial was covered by default")
	}
	notes := strings.Join(out.Notes, "\n")
	if !strings.Contains(notes, "1 request(s) denied in enforce mode are not covered") || !strings.Contains(notes, "default-forbid-exfiltration-services") {
		t.Errorf("notes:\n%s", notes)
	}
	if !strings.Contains(string(out.Policy), "// WARNING: the policy in force forbade some of these (default-forbid-exfiltration-services)") {
		t.Errorf("no warning on the permit:\n%s", out.Policy)
	}
	out, dir = suggestFiles(t, SuggestOptions{AgentID: "a", IncludeDenied: true}, denied)
	if ok, _ := allowed(t, engineFor(t, dir), "a", "GET https://blocked.test/x"); !ok || out.Left != 0 {
		t.Error("--include-denied did not cover the denial")
	}
}

// A wildcard exclusion forbids every name below it, however deep; a name outside every observation
// is forbidden too. An exclusion of every host is refused.
func TestSuggestExcludeWildcard(t *testing.T) {
	in := observations("a", Deny, "", "GET https://x.ads.test/p", "GET https://y.ads.test/p", "GET https://good.test/p")
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "a", Exclude: []string{"*.ads.test", "never.test"}}, in...)
	e := engineFor(t, dir)
	for spec, want := range map[string]bool{"GET https://good.test/p": true, "GET https://x.ads.test/p": false,
		"GET https://deep.x.ads.test/p": false, "GET https://never.test/": false} {
		if got, _ := allowed(t, e, "a", spec); got != want {
			t.Errorf("%s: %v, want %v", spec, got, want)
		}
	}
	if out.Excluded != 2 || !strings.Contains(string(out.Policy), "--exclude never.test): not seen in the records") {
		t.Errorf("excluded %d\n%s", out.Excluded, out.Policy)
	}
	for _, bad := range []string{"*", "", "a*b.test"} {
		if _, err := NewSuggester(SuggestOptions{AgentID: "a", Exclude: []string{bad}}); err == nil {
			t.Errorf("--exclude %q accepted", bad)
		}
	}
	if _, err := NewSuggester(SuggestOptions{}); err == nil {
		t.Error("no agent accepted")
	}
}

// An agent id that needs escaping in Cedar, TOML and comments still gives files that load and
// permit that agent.
func TestSuggestOddAgentID(t *testing.T) {
	agent := "we\"ird\\agent\x01\n// permit (principal, action, resource);"
	_, dir := suggestFiles(t, SuggestOptions{AgentID: agent, Exclude: []string{"bad.test"}}, obs(agent, "GET https://x.test/a", Deny, ""))
	e := engineFor(t, dir)
	if ok, d := allowed(t, e, agent, "GET https://x.test/a"); !ok {
		t.Errorf("%s %s", d.Outcome, d.Reason)
	}
	for _, name := range []string{RulesFileName, PolicyFileName(agent)} {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		if by, ok := SuggestedFor(data); !ok || by != agent {
			t.Errorf("%s: suggested for %q, %v", name, by, ok)
		}
	}
	if _, ok := SuggestedFor([]byte("# mapping-rules.toml: mine\n")); ok {
		t.Error("an operator's file taken for a suggestion")
	}
	if ok, _ := allowed(t, e, "someone", "GET https://x.test/a"); ok {
		t.Error("the comment in the agent id became a policy")
	}
}

func TestPolicyFileName(t *testing.T) {
	for in, want := range map[string]string{"claude-code": "claude-code.cedar", "../x/y": "_x_y.cedar", "": "agent.cedar", "a b": "a_b.cedar"} {
		if got := PolicyFileName(in); got != want {
			t.Errorf("PolicyFileName(%q) = %q, want %q", in, got, want)
		}
	}
}

// No records: a valid suggestion that permits nothing, and says so.
func TestSuggestNothingSeen(t *testing.T) {
	out, dir := suggestFiles(t, SuggestOptions{AgentID: "a"}, observations("b", Allow, "", "GET https://x.test/")...)
	if ok, _ := allowed(t, engineFor(t, dir), "a", "GET https://x.test/"); ok || !slices.ContainsFunc(out.Notes, func(n string) bool {
		return strings.Contains(n, "no decision of agent")
	}) {
		t.Errorf("notes %v", out.Notes)
	}
}
