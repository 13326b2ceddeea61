package policies

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go/types"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/testutil"
)

// fakeCapability records Stage 1 calls and answers with err, or token when err is nil.
type fakeCapability struct {
	token string
	err   error
	calls []string
}

func (f *fakeCapability) Authorize(agentID, actionClass, resource string, now time.Time) (string, error) {
	f.calls = append(f.calls, fmt.Sprintf("%s %s %s %d", agentID, actionClass, resource, now.UnixMilli()))
	return f.token, f.err
}

func newEngine(t *testing.T, cfg Config, m MappingConfig) *Engine {
	t.Helper()
	e, err := New(cfg, m, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func guideEngine(t *testing.T) *Engine {
	return newEngine(t, Config{Dir: "../examples/policies"}, MappingConfig{
		RulesPath:        "../examples/firma-run/local/assets/mapping-rules.claude.local.example.toml",
		DefaultProtected: true,
	})
}

func TestStage1(t *testing.T) {
	e := guideEngine(t)
	at := time.UnixMilli(1_700_000_000_000)
	ctx := context.Background()

	ok := &fakeCapability{token: "tok-1"}
	d, err := e.Decide(ctx, Request{AgentID: "claude-code", Method: "POST", Host: "API.anthropic.com", Path: "/v1/messages?beta=1",
		Transport: "https", Time: at, Capability: ok})
	if err != nil {
		t.Fatal(err)
	}
	if d.Outcome != Allow || d.TokenID != "tok-1" {
		t.Errorf("capability ok: %+v", d)
	}
	if want := []string{"claude-code communication.external.send api.anthropic.com/v1/messages 1700000000000"}; !slices.Equal(ok.calls, want) {
		t.Errorf("Stage 1 calls %q, want %q", ok.calls, want)
	}

	// Stage 1 passing does not skip Cedar.
	d, _ = e.Decide(ctx, Request{AgentID: "codex", Method: "CONNECT", Host: "api.anthropic.com", Port: 443, Capability: ok})
	if d.Outcome != Deny || d.Reason != ReasonNoPermit || d.TokenID != "tok-1" {
		t.Errorf("capability ok, no permit: %+v", d)
	}
	if !strings.HasPrefix(ok.calls[1], "codex communication.external.send api.anthropic.com ") {
		t.Errorf("CONNECT resource: %q", ok.calls[1])
	}

	bad := &fakeCapability{token: "ignored", err: errors.New("token expired")}
	d, _ = e.Decide(ctx, Request{AgentID: "claude-code", Method: "CONNECT", Host: "api.anthropic.com", Port: 443, Capability: bad})
	if d.Outcome != Deny || d.Reason != "capability: token expired" || d.TokenID != "" || len(d.MatchedPolicies) != 0 {
		t.Errorf("capability error: %+v", d)
	}
	// A Stage 1 deny still names the forbids that match (the guide's Step 7 audit query).
	d, _ = e.Decide(ctx, Request{AgentID: "claude-code", Method: "CONNECT", Host: "paste.rs", Port: 443, Capability: bad})
	if d.Outcome != Deny || d.Reason != "capability: token expired" || !slices.Equal(d.MatchedPolicies, []string{"forbid_at_claude-code.cedar_18"}) {
		t.Errorf("capability error on a forbidden host: %+v", d)
	}

	// Unclassified intents never reach Stage 1.
	n := len(bad.calls)
	d, _ = e.Decide(ctx, Request{AgentID: "claude-code", Method: "CONNECT", Host: "github.com", Port: 443, Capability: bad})
	if d.Reason != ReasonUnclassified || len(bad.calls) != n {
		t.Errorf("unclassified: %+v, %d Stage 1 calls", d, len(bad.calls)-n)
	}
}

func TestDecideFailsClosed(t *testing.T) {
	e := newEngine(t, Config{}, DefaultMappingConfig())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := e.Decide(ctx, Request{AgentID: "a", Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages"})
	if err == nil || d.Outcome != Deny {
		t.Errorf("canceled: %+v, %v", d, err)
	}
	d, err = e.Decide(context.Background(), Request{Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages"})
	if err != nil || d.Outcome != Deny || d.Reason != "malformed request: no agent id" {
		t.Errorf("no agent: %+v, %v", d, err)
	}
}

// TestForbidEvaluationErrorDenies: a forbid that cannot be evaluated must not let a request through.
func TestForbidEvaluationErrorDenies(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(`
permit (principal, action, resource);
@id("overflow")
forbid (principal, action, resource) when { context.pid * 9223372036854775807 > 0 };
`), 0o644)
	var logs bytes.Buffer
	e, err := New(Config{Dir: dir}, DefaultMappingConfig(), zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := e.Decide(context.Background(), Request{AgentID: "a", Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages", PID: 2})
	if d.Outcome != Deny || d.Reason != ReasonEvalError || !slices.Equal(d.MatchedPolicies, []string{"overflow"}) {
		t.Errorf("got %+v", d)
	}
	if !strings.Contains(logs.String(), "policy evaluation errors") {
		t.Errorf("evaluation error not logged: %s", logs.String())
	}
	d, _ = e.Decide(context.Background(), Request{AgentID: "a", Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages", PID: 0})
	if d.Outcome != Allow {
		t.Errorf("without the error: %+v", d)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	// Write then rename, as editors do, so a reader never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const (
	permitA = `permit (principal == Firma::Agent::"a", action == Firma::Action::"communication.external.send", resource);` + "\n"
	permitB = `permit (principal == Firma::Agent::"b", action == Firma::Action::"communication.external.send", resource);` + "\n"
	broken  = `permit (principal, action == Firma::Action::"no.such.class", resource);` + "\n"
)

func connect(agent string) Request {
	return Request{AgentID: agent, Method: "CONNECT", Host: "api.openai.com", Port: 443, Transport: "tls"}
}

// TestReload: a broken edit keeps the good set, a fix applies, and decisions running the whole
// time never fail or see anything but a whole set.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.cedar")
	writeFile(t, file, permitA)
	var logs testutil.SyncBuffer
	e, err := New(Config{Dir: dir}, DefaultMappingConfig(), zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	outcome := func(agent string) Outcome {
		d, err := e.Decide(ctx, connect(agent))
		if err != nil {
			t.Fatal(err)
		}
		return d.Outcome
	}

	// Decisions in flight during every reload below. Whichever set is active, a decision is either
	// an ALLOW by that set's one permit or a default deny: never an error, never anything else.
	stop := make(chan struct{})
	var decided atomic.Int64
	var wg sync.WaitGroup
	var bad atomic.Value
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, agent := range []string{"a", "b"} {
					d, err := e.Decide(ctx, connect(agent))
					okAllow := d.Outcome == Allow && slices.Equal(d.MatchedPolicies, []string{"permit_at_p.cedar_1"})
					okDeny := d.Outcome == Deny && d.Reason == ReasonNoPermit && len(d.MatchedPolicies) == 0
					if err != nil || !okAllow && !okDeny {
						bad.Store(fmt.Sprintf("decision for %s during reloads: %+v, %v", agent, d, err))
						return
					}
					decided.Add(1)
				}
			}
		}()
	}

	v1 := e.Version()
	if outcome("a") != Allow || outcome("b") != Deny {
		t.Fatal("first set not in effect")
	}

	writeFile(t, file, broken)
	err = e.Reload()
	if err == nil || !strings.Contains(err.Error(), "p.cedar:1:1") {
		t.Errorf("broken reload: %v", err)
	}
	if e.Version() != v1 || outcome("a") != Allow || outcome("b") != Deny {
		t.Error("a broken edit replaced the good set")
	}
	if !strings.Contains(logs.String(), "keeping the last good set") {
		t.Errorf("failed reload not logged: %s", logs.String())
	}

	writeFile(t, file, permitB)
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if e.Version() == v1 || outcome("a") != Deny || outcome("b") != Allow {
		t.Error("the fixed set did not apply")
	}
	for i := 0; i < 20; i++ { // reload under load
		if err := e.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	if msg := bad.Load(); msg != nil {
		t.Fatal(msg)
	}
	if decided.Load() == 0 {
		t.Fatal("no concurrent decisions ran")
	}
}

func TestReloadRules(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.toml")
	writeFile(t, rules, "[[rules]]\nmethod = \"CONNECT\"\nhost = \"api.openai.com\"\naction_class = \"communication.external.send\"\n")
	e := newEngine(t, Config{}, MappingConfig{RulesPath: rules, DefaultProtected: true})
	d, _ := e.Decide(context.Background(), connect("a"))
	if d.ActionClass != "communication.external.send" {
		t.Fatalf("got %+v", d)
	}
	writeFile(t, rules, "[[rules]]\nmethod = \"CONNECT\"\nhost = \"api.openai.com\"\naction_class = \"no.such\"\n")
	if err := e.Reload(); err == nil || !strings.Contains(err.Error(), "rules.toml:1: rules[0]: unknown action class") {
		t.Errorf("bad rules reload: %v", err)
	}
	if d, _ := e.Decide(context.Background(), connect("a")); d.ActionClass != "communication.external.send" {
		t.Errorf("bad rules replaced the good ones: %+v", d)
	}
	writeFile(t, rules, "[[rules]]\nmethod = \"CONNECT\"\nhost = \"api.openai.com\"\naction_class = \"network.connect\"\n")
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Decide(context.Background(), connect("a")); d.ActionClass != "network.connect" {
		t.Errorf("new rules not applied: %+v", d)
	}
}

func TestNewFailsOnBadInput(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bad.cedar"), broken)
	for _, tc := range []struct {
		cfg  Config
		m    MappingConfig
		want string
	}{
		{Config{Dir: dir}, DefaultMappingConfig(), "bad.cedar:1:1: policy permit_at_bad.cedar_1"},
		{Config{Dir: filepath.Join(dir, "missing")}, DefaultMappingConfig(), "loading policy dir"},
		{Config{Schema: "testdata/invalid/schema/no-agent.cedarschema"}, DefaultMappingConfig(), "entity type Firma::Agent is not declared"},
		{Config{}, MappingConfig{RulesPath: "testdata/invalid/rules/duplicate.toml"}, "duplicate.toml:8"},
	} {
		if _, err := New(tc.cfg, tc.m, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v, %+v): %v, want %q", tc.cfg, tc.m, err, tc.want)
		}
		if err := CheckConfig(tc.cfg, tc.m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckConfig(%+v, %+v): %v, want %q", tc.cfg, tc.m, err, tc.want)
		}
	}
}

func TestLoadBundle(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "local.cedar"), permitA)
	e := newEngine(t, Config{Dir: dir}, DefaultMappingConfig())
	ctx := context.Background()
	allowed := func(agent string) bool {
		d, _ := e.Decide(ctx, connect(agent))
		return d.Outcome == Allow
	}
	if !allowed("a") || allowed("b") {
		t.Fatal("local set not in effect")
	}
	v := e.Version()
	if err := e.LoadBundle(map[string][]byte{"b.cedar": []byte(broken)}, nil); err == nil {
		t.Error("a bad bundle loaded")
	}
	if e.Version() != v || !allowed("a") {
		t.Error("a bad bundle replaced the set")
	}
	if err := e.LoadBundle(map[string][]byte{"b.cedar": []byte(permitB)}, nil); err != nil {
		t.Fatal(err)
	}
	if allowed("a") || !allowed("b") {
		t.Error("bundle not in effect")
	}
	d, _ := e.Decide(ctx, connect("b"))
	if !slices.Equal(d.MatchedPolicies, []string{"permit_at_b.cedar_1"}) {
		t.Errorf("bundle policy ids: %v", d.MatchedPolicies)
	}
	// A reload re-reads the local files but keeps the bundle's policies.
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if allowed("a") || !allowed("b") {
		t.Error("reload dropped the bundle")
	}
	// A bundle schema that lacks a class the local rules use is refused: the rules must validate.
	small := schemaWith(`action "communication.external.send" appliesTo { principal: Agent, resource: Resource, context: Context };`)
	err := e.LoadBundle(map[string][]byte{"b.cedar": []byte(permitB)}, []byte(small))
	if err == nil || !strings.Contains(err.Error(), "mapping rules under the bundle's schema") {
		t.Errorf("bundle schema without the rules' classes: %v", err)
	}
	if !allowed("b") {
		t.Error("refused bundle replaced the set")
	}
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.cedar")
	writeFile(t, file, permitA)
	var logs testutil.SyncBuffer
	e, err := New(Config{Dir: dir}, DefaultMappingConfig(), zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; log:\n%s", what, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond) // let the watcher start
	v1 := e.Version()

	writeFile(t, file, broken)
	waitFor("the failed reload", func() bool { return strings.Contains(logs.String(), "keeping the last good set") })
	if e.Version() != v1 {
		t.Error("a broken edit replaced the set")
	}
	writeFile(t, filepath.Join(dir, "q.cedar"), permitB) // a new file in the dir counts too
	writeFile(t, file, permitA)
	waitFor("the new set", func() bool { return e.Version() != v1 })
	d, _ := e.Decide(context.Background(), connect("b"))
	if d.Outcome != Allow {
		t.Errorf("watched change not applied: %+v", d)
	}
	// Files that are not policies are ignored.
	v2 := e.Version()
	writeFile(t, filepath.Join(dir, "notes.txt"), "x")
	time.Sleep(3 * reloadDelay)
	if e.Version() != v2 {
		t.Error("a non-policy file changed the set")
	}
}

// testContext is the full Cedar context of a normalized request with no content.
func testContext(n *normalized) types.Record {
	f := &facts{n: n, r: &Request{}, lim: &limits{maxBody: DefaultMaxBodyBytes}, schema: EmbeddedSchema()}
	rec, _, err := f.context(allAttrs)
	if err != nil {
		panic(err)
	}
	return rec
}

// schemaWith is the embedded schema's entity types and context with only the given action
// declarations.
func schemaWith(actions ...string) string {
	text := string(embeddedSchemaText)
	return text[:strings.Index(text, "    // Groups.")] + strings.Join(actions, "\n") + "\n}\n"
}
