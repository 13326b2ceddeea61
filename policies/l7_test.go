package policies

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	"github.com/rs/zerolog"
)

// l7Engine loads the given policy text as the only file of a local set, with the embedded rules.
func l7Engine(t *testing.T, cfg Config, text string) *Engine {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "l7.cedar"), text)
	cfg.Dir = dir
	return newEngine(t, cfg, DefaultMappingConfig())
}

// chat is a POST to Anthropic's messages API (model.inference.chat) carrying body as JSON.
func chat(body string) Request {
	return Request{
		AgentID: "agent", SessionID: "s1", Method: "POST", Host: "api.anthropic.com", Path: "/v1/messages",
		Transport: "https", Time: FixtureTime,
		Content: Content{
			Header:   http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer sk-ant"}, "User-Agent": {"python"}},
			BodySize: int64(len(body)), Body: []byte(body),
		},
	}
}

func decide(t *testing.T, e *Engine, r Request) Decision {
	t.Helper()
	d, err := e.Decide(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

const permitAll = `@id("permit-all") permit (principal, action, resource);` + "\n"

// TestOnlyThisModel: "only this model, at most N tokens" is one forbid, and the decision names the
// field that decided.
func TestOnlyThisModel(t *testing.T) {
	e := l7Engine(t, Config{}, permitAll+`
@id("haiku-only")
forbid (principal, action == Firma::Action::"model.inference.chat", resource)
unless { context.json has model && context.json.model == "claude-haiku-4-5" &&
         context.json has max_tokens && context.json.max_tokens <= 1024 };
`)
	for _, tc := range []struct {
		body    string
		outcome Outcome
		reason  string
	}{
		{`{"model":"claude-haiku-4-5","max_tokens":1024,"messages":[]}`, Allow, ReasonPermitted},
		{`{"model":"claude-opus-4-1","max_tokens":1024}`, Deny, ReasonForbidden},
		{`{"model":"claude-haiku-4-5","max_tokens":4096}`, Deny, ReasonForbidden},
		{`{"model":"claude-haiku-4-5"}`, Deny, ReasonForbidden},
		{`{"model":"claude-haiku-4-5","max_tokens":10,"MODEL":"claude-opus-4-1"}`, Deny, "malformed request body"},
		{`{"model":"claude-haiku-4-5","max_tokens":"10"}`, Deny, "malformed request body"},
	} {
		d := decide(t, e, chat(tc.body))
		if d.Outcome != tc.outcome || !strings.HasPrefix(d.Reason, tc.reason) {
			t.Errorf("%s: %s %q, want %s %q", tc.body, d.Outcome, d.Reason, tc.outcome, tc.reason)
		}
		if d.Outcome == Deny && d.Reason == ReasonForbidden {
			if want := []string{"context.json.max_tokens", "context.json.model"}; !slices.Equal(d.Fields, want) || !slices.Equal(d.MatchedPolicies, []string{"haiku-only"}) {
				t.Errorf("%s: fields %q policies %q", tc.body, d.Fields, d.MatchedPolicies)
			}
		}
	}
	// The JSON is read whatever the body is declared as, and after undoing gzip.
	r := chat("")
	r.Content.Header.Set("Content-Type", "text/plain")
	r.Content.Header.Set("Content-Encoding", "gzip")
	r.Content.Body = gzipped(t, []byte(`{"model":"claude-opus-4-1","max_tokens":10}`))
	r.Content.BodySize = int64(len(r.Content.Body))
	if d := decide(t, e, r); d.Outcome != Deny || d.Reason != ReasonForbidden {
		t.Errorf("gzipped text/plain JSON: %s %q", d.Outcome, d.Reason)
	}
	// Other action classes are not the policy's business: no body is needed for them.
	models := chat(`{}`)
	models.Method, models.Path = "GET", "/v1/models"
	models.Content = Content{}
	if d := decide(t, e, models); d.Outcome != Deny || d.ActionClass != "model.inference.chat" {
		t.Errorf("GET /v1/models: %+v", d)
	}
}

// TestBodySize: a body-size limit is one forbid; an unknown or over-limit size denies a decision
// that reads it, never lets it through.
func TestBodySize(t *testing.T) {
	e := l7Engine(t, Config{MaxBodyBytes: 4 << 20}, permitAll+`
@id("upload-limit")
forbid (principal, action, resource)
when { resource.path == "/v1/files" && context.body_size > 1048576 };
`)
	upload := func(size int64, body []byte, truncated bool) Request {
		r := chat("")
		r.Path = "/v1/files"
		r.Content.BodySize, r.Content.Body, r.Content.BodyTruncated = size, body, truncated
		return r
	}
	for _, tc := range []struct {
		name    string
		r       Request
		outcome Outcome
		reason  string
	}{
		{"512 KiB by Content-Length", upload(512<<10, nil, false), Allow, ReasonPermitted},
		{"2 MiB by Content-Length", upload(2<<20, nil, false), Deny, ReasonForbidden},
		{"2 MiB buffered (chunked)", upload(-1, make([]byte, 2<<20), false), Deny, ReasonForbidden},
		{"512 KiB buffered (chunked)", upload(-1, make([]byte, 512<<10), false), Allow, ReasonPermitted},
		{"chunked, not buffered", upload(-1, nil, false), Deny, errBodyNotGiven.Error()},
		{"over max_body_bytes", upload(-1, make([]byte, 4<<20), true), Deny, ReasonBodyTooLarge},
	} {
		d := decide(t, e, tc.r)
		if d.Outcome != tc.outcome || d.Reason != tc.reason {
			t.Errorf("%s: %s %q, want %s %q", tc.name, d.Outcome, d.Reason, tc.outcome, tc.reason)
		}
	}
	// Another path: the forbid is a candidate (same class) so a chunked body is needed, and
	// denied without it.
	r := upload(-1, nil, false)
	r.Path = "/v1/messages"
	if !e.NeedsBody(r) {
		t.Error("NeedsBody false for a chunked body a candidate's body_size reads")
	}
}

func TestNeedsBody(t *testing.T) {
	e := l7Engine(t, Config{}, permitAll+`
forbid (principal, action == Firma::Action::"model.inference.chat", resource)
unless { context.json has model && context.json.model == "m" };
forbid (principal, action == Firma::Action::"model.inference.embedding", resource)
when { context.body_size > 100 };
`)
	withBody := func(method, host, path string, size int64) Request {
		return Request{AgentID: "a", Method: method, Host: host, Path: path, Transport: "https", Content: Content{BodySize: size}}
	}
	for _, tc := range []struct {
		r    Request
		want bool
	}{
		{withBody("POST", "api.anthropic.com", "/v1/messages", 10), true},         // json
		{withBody("POST", "api.anthropic.com", "/v1/messages", -1), true},         // json, chunked
		{withBody("POST", "api.anthropic.com", "/v1/messages", 0), false},         // no body
		{withBody("POST", "api.openai.com", "/v1/embeddings", 10), false},         // size known
		{withBody("POST", "api.openai.com", "/v1/embeddings", -1), true},          // size unknown
		{withBody("POST", "api.openai.com", "/v1/images/generations", 10), false}, // no candidate reads the body
		{withBody("POST", "unclassified.example", "/", 10), false},
		{withBody("CONNECT", "api.anthropic.com", "", 10), false},
		{withBody("POST", "github.com", "/o/r.git/git-receive-pack", -1), true}, // a push
		{withBody("POST", "github.com", "/o/r.git/git-upload-pack", 10), false}, // a fetch
		{withBody("POST", "api.anthropic.com", "/%zz", 10), false},              // malformed: denied anyway
	} {
		if got := e.NeedsBody(tc.r); got != tc.want {
			t.Errorf("%s %s%s size %d: NeedsBody %v, want %v", tc.r.Method, tc.r.Host, tc.r.Path, tc.r.Content.BodySize, got, tc.want)
		}
	}
	if e.MaxBodyBytes() != DefaultMaxBodyBytes {
		t.Errorf("MaxBodyBytes %d", e.MaxBodyBytes())
	}
}

// TestHeadersNeverExposeCredentials: a policy cannot read a credential header, so it cannot be
// written to depend on one.
func TestHeadersNeverExposeCredentials(t *testing.T) {
	e := l7Engine(t, Config{HiddenHeaders: []string{"X-Internal"}}, permitAll+`
@id("sees-auth") forbid (principal, action, resource) when { context.headers.hasTag("authorization") };
@id("sees-internal") forbid (principal, action, resource) when { context.headers.hasTag("x-internal") };
@id("curl") forbid (principal, action, resource)
when { context.headers.hasTag("user-agent") && context.headers.getTag("user-agent") like "curl/*" };
`)
	r := chat(`{}`)
	r.Content.Header.Set("X-Internal", "1")
	if d := decide(t, e, r); d.Outcome != Allow {
		t.Errorf("credential headers were visible: %+v", d)
	}
	r.Content.Header.Set("User-Agent", "curl/8.5")
	if d := decide(t, e, r); d.Outcome != Deny || !slices.Equal(d.MatchedPolicies, []string{"curl"}) || !slices.Equal(d.Fields, []string{"context.headers.user-agent"}) {
		t.Errorf("user-agent: %+v", d)
	}
	if _, err := New(Config{HiddenHeaders: []string{"bad header"}}, DefaultMappingConfig(), zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "sidecar.policy.hidden_headers") {
		t.Errorf("bad hidden header: %v", err)
	}
}

func TestQueryPolicies(t *testing.T) {
	e := l7Engine(t, Config{}, permitAll+`
@id("pinned-version")
forbid (principal, action, resource)
when { context.query.hasTag("api-version") && context.query.getTag("api-version") != ["2024-10-21"] };
@id("no-key-in-url")
forbid (principal, action, resource) when { context.query_params.containsAny(["key", "api_key"]) };
`)
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/v1/messages", nil},
		{"/v1/messages?api-version=2024-10-21", nil},
		{"/v1/messages?api-version=2025-01-01", []string{"pinned-version"}},
		{"/v1/messages?api-version=2024-10-21&api-version=2025-01-01", []string{"pinned-version"}}, // pollution
		{"/v1/messages?x=1;api-version=2025-01-01", []string{"pinned-version"}},                    // ';' separates
		{"/v1/messages?api%2Dversion=2025", []string{"pinned-version"}},                            // decoded
		{"/v1/messages?key=AIza", []string{"no-key-in-url"}},
	} {
		r := chat(`{}`)
		r.Path = tc.path
		d := decide(t, e, r)
		if !slices.Equal(d.MatchedPolicies, tc.want) && !(tc.want == nil && d.Outcome == Allow) {
			t.Errorf("%s: %s %v, want %v", tc.path, d.Outcome, d.MatchedPolicies, tc.want)
		}
	}
	r := chat(`{}`)
	r.Path = "/v1/messages?a=%zz"
	if d := decide(t, e, r); d.Outcome != Deny || !strings.HasPrefix(d.Reason, "malformed request: query") {
		t.Errorf("bad query: %+v", d)
	}
}

func TestRemediations(t *testing.T) {
	e := l7Engine(t, Config{}, permitAll+`
@id("strip-debug")
@modify("redact_header:X-Debug-Token")
forbid (principal, action, resource) when { context.headers.hasTag("x-trace") };

@id("strip-trace")
@modify("redact_header:x-trace")
forbid (principal, action, resource) when { context.headers.hasTag("x-trace") };

@id("rate")
@defer("1500")
forbid (principal, action, resource) when { context.headers.hasTag("x-slow") };

@id("ask")
@step_up("Approve a call to an expensive model in the firma console")
forbid (principal, action, resource) when { context.headers.hasTag("x-opus") };

@id("hard")
forbid (principal, action, resource) when { context.headers.hasTag("x-never") };
`)
	with := func(headers ...string) Request {
		r := chat(`{}`)
		for _, h := range headers {
			r.Content.Header.Set(h, "1")
		}
		return r
	}
	for _, tc := range []struct {
		name     string
		r        Request
		outcome  Outcome
		reason   string
		policies []string
	}{
		{"modify", with("X-Trace"), Modify, "modified by policy: redact_header x-debug-token, x-trace", []string{"permit-all", "strip-debug", "strip-trace"}},
		{"defer", with("X-Slow"), Defer, "deferred by policy: retry after 1500 ms", []string{"rate"}},
		{"step-up beats defer and modify", with("X-Slow", "X-Opus", "X-Trace"), StepUp,
			"step-up required: Approve a call to an expensive model in the firma console", []string{"ask", "rate", "strip-debug", "strip-trace"}},
		{"a plain forbid beats any remediation", with("X-Never", "X-Opus"), Deny, ReasonForbidden, []string{"ask", "hard"}},
	} {
		d := decide(t, e, tc.r)
		if d.Outcome != tc.outcome || d.Reason != tc.reason || !slices.Equal(d.MatchedPolicies, tc.policies) {
			t.Errorf("%s: %s %q %v, want %s %q %v", tc.name, d.Outcome, d.Reason, d.MatchedPolicies, tc.outcome, tc.reason, tc.policies)
		}
		if (d.Remediation != nil) != (tc.outcome != Deny) {
			t.Errorf("%s: remediation %+v", tc.name, d.Remediation)
		}
	}
	d := decide(t, e, with("X-Slow"))
	if d.Remediation.RetryAfter != 1500*time.Millisecond || d.Remediation.RetryAfterSeconds() != 2 {
		t.Errorf("defer: %+v", d.Remediation)
	}
	if d := decide(t, e, with("X-Trace")); !slices.Equal(d.Remediation.RedactHeaders, []string{"x-debug-token", "x-trace"}) || !d.Outcome.Allowed() {
		t.Errorf("modify: %+v", d.Remediation)
	}
	for _, o := range []Outcome{Deny, Defer, StepUp, Abort} {
		if o.Allowed() {
			t.Errorf("%s is allowed", o)
		}
	}

	// A remediation applies to a request a policy would allow; without a permit it is a denial.
	e = l7Engine(t, Config{}, `
@defer("1000") forbid (principal, action, resource) when { context.headers.hasTag("x-slow") };
`)
	if d := decide(t, e, with("X-Slow")); d.Outcome != Deny || d.Reason != ReasonNoPermit || len(d.MatchedPolicies) != 0 {
		t.Errorf("defer without a permit: %+v", d)
	}
	// A connection-level intent cannot be modified, deferred or stepped up: denied.
	e = l7Engine(t, Config{}, permitAll+`@step_up("ask") forbid (principal, action, resource);`)
	if d := decide(t, e, Request{AgentID: "a", Method: "CONNECT", Host: "api.anthropic.com", Port: 443}); d.Outcome != Deny ||
		d.Reason != "forbidden by policy (@step_up applies to HTTP requests only)" {
		t.Errorf("CONNECT with step_up: %+v", d)
	}
}

// TestSessionPolicies: after one denial, a deny_count forbid blocks the session and not another;
// "at most N model calls per hour" counts allowed calls by class and by group.
func TestSessionPolicies(t *testing.T) {
	e := l7Engine(t, Config{}, permitAll+`
@id("paste-ban") forbid (principal, action, resource) when { resource.host == "paste.rs" };
@id("after-deny")
forbid (principal, action == Firma::Action::"communication.external.send", resource)
when { context.deny_count > 0 };
@id("model-rate")
@defer("60000")
forbid (principal, action in Firma::Action::"model", resource)
when { context.actions_last_hour.hasTag("model") && context.actions_last_hour.getTag("model") >= 3 };
`)
	at := FixtureTime
	connect := func(session, host string) Request {
		return Request{AgentID: "agent", SessionID: session, Method: "CONNECT", Host: host, Port: 443, Time: at}
	}
	step := func(r Request) Decision {
		d := decide(t, e, r)
		e.Observe(d)
		return d
	}
	if d := step(connect("s1", "api.anthropic.com")); d.Outcome != Allow {
		t.Fatalf("first connect: %+v", d)
	}
	if d := step(connect("s1", "paste.rs")); d.Outcome != Deny {
		t.Fatalf("paste.rs: %+v", d)
	}
	if d := step(connect("s1", "api.anthropic.com")); d.Outcome != Deny || !slices.Equal(d.MatchedPolicies, []string{"after-deny"}) ||
		!slices.Equal(d.Fields, []string{"context.deny_count"}) {
		t.Errorf("after a denial, same session: %+v", d)
	}
	if d := step(connect("s2", "api.anthropic.com")); d.Outcome != Allow {
		t.Errorf("another session: %+v", d)
	}
	other := connect("s1", "api.anthropic.com")
	other.AgentID = "other-agent"
	if d := step(other); d.Outcome != Allow {
		t.Errorf("another agent with the same session id: %+v", d)
	}

	// Three model calls in the hour pass; the fourth is deferred; an hour later it passes again.
	for i := 0; i < 5; i++ {
		r := chat(`{}`)
		r.SessionID, r.Time = "s3", at.Add(time.Duration(i)*time.Minute)
		d := step(r)
		want := Allow
		if i >= 3 {
			want = Defer
		}
		if d.Outcome != want {
			t.Errorf("model call %d: %s %q, want %s", i, d.Outcome, d.Reason, want)
		}
	}
	r := chat(`{}`)
	r.SessionID, r.Time = "s3", at.Add(62*time.Minute)
	if d := step(r); d.Outcome != Allow {
		t.Errorf("an hour later: %s %q", d.Outcome, d.Reason)
	}
	st := e.Sessions().Snapshot("agent", "s3", at.Add(62*time.Minute))
	if st.ActionCount != 6 || st.DenyCount != 2 || !slices.Equal(st.PriorActionClasses, []string{"model.inference.chat"}) ||
		st.LastResource != "api.anthropic.com/v1/messages" || st.Duration != 62*time.Minute || st.LastHour["model.inference.chat"] != 1 || st.LastMinute["model.inference.chat"] != 1 {
		t.Errorf("snapshot: %+v", st)
	}
}

// TestSessionState: an explicit snapshot in the request is what Cedar sees, every attribute.
func TestSessionState(t *testing.T) {
	e := l7Engine(t, Config{}, permitAll+`
@id("all")
forbid (principal, action, resource)
when { context.action_count == 7 && context.deny_count == 2 && context.prior_action_classes.contains("code.read") &&
       context.last_resource == "github.com/o/r" && context.session_duration_s == 90 &&
       context.actions_last_minute.hasTag("code") && context.actions_last_minute.getTag("code") == 3 &&
       context.actions_last_hour.hasTag("code.read") && context.actions_last_hour.getTag("code.read") == 5 };
`)
	r := chat(`{}`)
	r.Session = &SessionState{ActionCount: 7, DenyCount: 2, PriorActionClasses: []string{"code.read"}, LastResource: "github.com/o/r",
		Duration: 90 * time.Second, LastMinute: map[string]int64{"code.read": 1, "code.write": 2}, LastHour: map[string]int64{"code.read": 5}}
	if d := decide(t, e, r); d.Outcome != Deny || !slices.Equal(d.MatchedPolicies, []string{"all"}) {
		t.Errorf("snapshot not seen: %+v", d)
	}
	r.Session.DenyCount = 3
	if d := decide(t, e, r); d.Outcome != Allow {
		t.Errorf("changed snapshot: %+v", d)
	}
}

// TestLazyContextMatchesFull: a decision builds only the attributes its candidates read; it must
// decide exactly as Cedar does with the whole context, for policies over every attribute.
func TestLazyContextMatchesFull(t *testing.T) {
	conds := []string{
		`context.session_id == "s1"`, `context.timestamp_ms > 0`, `context.raw_transport == "https"`, `context.pid == 7`,
		`context.exe like "*/python3"`, `context.uid == 1000`, `context.cgroup like "*agent*"`, `context.body_size > 5`,
		`context.content_type == "application/json"`, `context.query.hasTag("q")`, `context.query_params.contains("q")`,
		`context.headers.hasTag("user-agent")`, `context.json has model`, `context.git_service == ""`, `context.git_owner == ""`,
		`context.git_repo == ""`, `context.git_refs.isEmpty()`, `!context.git_delete`, `!context.git_force`,
		`context.action_count >= 0`, `context.deny_count == 0`, `context.prior_action_classes.isEmpty()`,
		`context.last_resource == ""`, `context.session_duration_s == 0`, `context.actions_last_minute.hasTag("model")`,
		`context.actions_last_hour.hasTag("model")`,
	}
	if len(conds) != int(numAttrs) {
		t.Fatalf("%d conditions for %d attributes", len(conds), numAttrs)
	}
	var b strings.Builder
	for i, c := range conds {
		effect := "permit"
		if i%2 == 1 {
			effect = "forbid"
		}
		fmt.Fprintf(&b, "@id(\"p%d\") %s (principal, action, resource) when { %s };\n", i, effect, c)
	}
	set, err := ParseFiles(map[string][]byte{"all.cedar": []byte(b.String())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, single := range set.policies {
		// Each policy alone, so that its context is built from its own reads only.
		one := &Set{schema: set.schema, byID: map[string]*policy{single.id: single}, policies: []*policy{single}}
		one.idx = buildIndex(one.policies, set.schema)
		for _, body := range []string{`{"model":"m"}`, `[]`} {
			r := chat(body)
			r.Path = "/v1/messages?q=1"
			r.PID, r.UID, r.Exe, r.Cgroup = 7, 1000, "/usr/bin/python3", "/firma-agents.slice/agent"
			n, err := normalize(&r)
			if err != nil {
				t.Fatal(err)
			}
			f := &facts{n: &n, r: &r, now: r.Time, lim: &limits{maxBody: DefaultMaxBodyBytes}, schema: set.schema, sessions: NewSessions(0)}
			rec, extra, err := f.context(allAttrs)
			if err != nil {
				t.Fatal(err)
			}
			ents := &requestEntities{resource: resourceEntity(&n, ""), extra: extra, actions: set.schema.actions}
			req := types.Request{
				Principal: types.NewEntityUID(AgentType, "agent"), Action: types.NewEntityUID(ActionType, "model.inference.chat"),
				Resource: ents.resource.UID, Context: rec,
			}
			want, wantDiag := cedar.Authorize(cedarSet(single), ents, req)
			st := &state{set: one, rules: EmbeddedRules()}
			v, err := (&Engine{lim: f.lim, log: zerolog.Nop()}).evaluate(st, f, "model.inference.chat", "")
			if err != nil {
				t.Fatal(err)
			}
			if v.allowed != (want == cedar.Allow) || len(v.errs) != len(wantDiag.Errors) || len(v.matched) != len(wantDiag.Reasons) {
				t.Errorf("%s on %s: lazy allowed=%v matched=%v errs=%v; full %v %v", single.id, body, v.allowed, v.policies, v.errs, want, wantDiag)
			}
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MaxBodyBytes: -1}, "sidecar.policy.max_body_bytes: -1 is negative"},
		{Config{MaxSessions: -1}, "sidecar.policy.max_sessions"},
		{Config{Git: GitConfig{Hosts: []string{"api.*.com"}}}, "sidecar.policy.git.hosts"},
		{Config{Git: GitConfig{ProtectedBranches: []string{""}}}, "sidecar.policy.git.protected_branches"},
	} {
		err := CheckConfig(tc.cfg, DefaultMappingConfig())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
		if _, err := New(tc.cfg, DefaultMappingConfig(), zerolog.Nop()); err == nil {
			t.Errorf("New accepted %+v", tc.cfg)
		}
	}
	if !errors.Is(errBodyTooLarge, errBodyTooLarge) || errBodyTooLarge.Error() != ReasonBodyTooLarge {
		t.Error("ReasonBodyTooLarge is not the error's text")
	}
}

// TestOldSchemaSaysWhatToAdd: a replacement schema written for an older firma, without the request
// content, git and session attributes, is refused with the attributes and entity types to add.
func TestOldSchemaSaysWhatToAdd(t *testing.T) {
	old := `namespace Firma {
    entity Agent;
    entity Resource { host: String, path: String, method: String, port: Long, provider?: String };
    type Context = { session_id: String, timestamp_ms: Long, raw_transport: String, pid: Long, exe: String, uid: Long, cgroup: String };
    action "web.request" appliesTo { principal: Agent, resource: Resource, context: Context };
}`
	_, err := ParseSchema("old.cedarschema", []byte(old))
	if !errors.Is(err, ErrInvalidSchema) {
		t.Fatalf("want ErrInvalidSchema, got %v", err)
	}
	for _, want := range []string{
		`old.cedarschema: action "web.request" cannot take firma's requests: context lacks body_size: Long`,
		`context lacks json: Firma::Json`,
		`context lacks actions_last_hour: Firma::Counts`,
		`entity type Firma::Query is not declared (want: entity Firma::Query tags Set<String>)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// A Json entity may declare fewer fields, optional and of firma's types, and no others.
	text := string(embeddedSchemaText)
	fewer := strings.Replace(text, "        model?: String,\n", "", 1)
	if _, err := ParseSchema("fewer.cedarschema", []byte(fewer)); err != nil {
		t.Errorf("a Json with fewer fields: %v", err)
	}
	for name, edit := range map[string][2]string{
		"required":   {"model?: String", "model: String"},
		"wrong type": {"max_tokens?: Long", "max_tokens?: String"},
		"unknown":    {"model?: String,", "model?: String, modle?: String,"},
		"no tags":    {"entity Headers tags String;", "entity Headers;"},
	} {
		if _, err := ParseSchema(name+".cedarschema", []byte(strings.Replace(text, edit[0], edit[1], 1))); !errors.Is(err, ErrInvalidSchema) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestGzipBombs: a gzipped JSON body that inflates past max_body_bytes is denied, never read in
// full; a gzipped push that does is judged on its prefix.
func TestGzipBombs(t *testing.T) {
	e := l7Engine(t, Config{MaxBodyBytes: 1 << 20}, permitAll+`
forbid (principal, action == Firma::Action::"model.inference.chat", resource)
unless { context.json has model && context.json.model == "m" };
`)
	r := chat("")
	r.Content.Header.Set("Content-Encoding", "gzip")
	r.Content.Body = gzipped(t, append([]byte(`{"model":"m","pad":"`), make([]byte, 8<<20)...))
	r.Content.BodySize = int64(len(r.Content.Body))
	if d := decide(t, e, r); d.Outcome != Deny || d.Reason != "request body over max_body_bytes: decompresses to more than 1048576 bytes" {
		t.Errorf("bomb: %s %q", d.Outcome, d.Reason)
	}
	zero := strings.Repeat("0", 40)
	push := hex4(4+len(zero)*2+2+len("refs/heads/x\n")) + zero[:39] + "1 " + zero + " refs/heads/x\n0000"
	r = Request{AgentID: "a", Method: "POST", Host: "github.com", Path: "/o/r.git/git-receive-pack", Transport: "https",
		Content: Content{Header: http.Header{"Content-Encoding": {"gzip"}}}}
	r.Content.Body = gzipped(t, append([]byte(push+"PACK"), make([]byte, 8<<20)...))
	r.Content.BodySize = int64(len(r.Content.Body))
	if d := decide(t, e, r); d.ActionClass != ClassCodeDestructive || d.Git == nil || len(d.Git.Updates) != 1 || !d.Git.Updates[0].Delete {
		t.Errorf("gzipped push over the limit: %+v %+v", d, d.Git)
	}
}
