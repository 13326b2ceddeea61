package judge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/connector"
	"github.com/openfirma/firma/policies"
)

// fakeEngine answers every request with one decision and remembers the requests and what it was
// told to observe.
type fakeEngine struct {
	mu       sync.Mutex
	d        policies.Decision
	err      error
	reqs     []policies.Request
	observed []policies.Decision
}

func (e *fakeEngine) Decide(_ context.Context, r policies.Request) (policies.Decision, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reqs = append(e.reqs, r)
	return e.d, e.err
}

func (e *fakeEngine) NeedsBody(policies.Request) bool { return true }
func (e *fakeEngine) MaxBodyBytes() int64             { return 1 << 20 }

func (e *fakeEngine) Observe(d policies.Decision) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.observed = append(e.observed, d)
}

// fakeRecorder keeps records in memory; fail makes Append fail. Records of a class in suppress are
// counted by AppendLimited instead of written; limited lists the class of each limited append.
type fakeRecorder struct {
	mu       sync.Mutex
	events   []*audit.Event
	fail     error
	n        int
	suppress map[string]bool
	limited  []string
	dropped  int
}

func (r *fakeRecorder) AppendLimited(class string, ev *audit.Event) (bool, error) {
	r.mu.Lock()
	r.limited = append(r.limited, class)
	if r.suppress[class] {
		r.dropped++
		r.mu.Unlock()
		return false, nil
	}
	r.mu.Unlock()
	return true, r.Append(ev)
}

func (r *fakeRecorder) Append(ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.n++
	ev.ID = "ev" + string(rune('0'+r.n))
	r.events = append(r.events, ev)
	return nil
}

func (r *fakeRecorder) last() *audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return nil
	}
	return r.events[len(r.events)-1]
}

var allow = policies.Decision{Outcome: policies.Allow, Reason: "permitted", ActionClass: "communication.external.send",
	MatchedPolicies: []string{"permit-test"}}

func testFlow() *Flow {
	return &Flow{AgentID: "agent-1", SessionID: "s-1", Cgroup: "/firma.slice/a", PID: 42, UID: 1000, Comm: "curl",
		Exe: "/usr/bin/curl", OrigDst: netip.MustParseAddrPort("127.0.9.9:443"), Start: time.Now()}
}

func connectIntent() Intent {
	return Intent{Method: policies.MethodConnect, Host: "api.example.com", Port: 443, Transport: "tls", Mode: ModeConnect, SNI: "api.example.com"}
}

// TestDecideRecordsFirst: by the time Decide returns, the record of the decision has been appended,
// and it says what the verdict says.
func TestDecideRecordsFirst(t *testing.T) {
	eng, rec := &fakeEngine{d: allow}, &fakeRecorder{}
	j := New(Options{Engine: eng, Audit: rec, Log: zerolog.Nop()})
	v := j.Decide(context.Background(), testFlow(), connectIntent())
	ev := rec.last()
	if ev == nil || ev.ID != v.RecordID() || !v.Allowed() {
		t.Fatalf("verdict %+v, record %+v", v, ev)
	}
	env := ev.Envelope
	if ev.Kind != audit.KindDecision || ev.Decision.Outcome != "ALLOW" || env.Agent.PID != 42 || env.Agent.Exe != "/usr/bin/curl" ||
		env.Agent.Comm != "curl" || env.Agent.UID != 1000 || env.Agent.Cgroup != "/firma.slice/a" ||
		env.Intent.Resource.Host != "api.example.com:443" || *env.Intent.ActionClass != "communication.external.send" ||
		env.Transport.Mode != "connect" || env.Transport.SNI != "api.example.com" || env.Transport.OrigDst != "127.0.9.9:443" ||
		len(ev.Decision.MatchedPolicies) != 1 {
		t.Fatalf("record %+v / %+v", ev, env)
	}
	r := eng.reqs[0]
	if r.AgentID != "agent-1" || r.SessionID != "s-1" || r.PID != 42 || r.UID != 1000 || r.Exe != "/usr/bin/curl" ||
		r.Host != "api.example.com" || r.Port != 443 || r.Method != policies.MethodConnect || r.Transport != "tls" {
		t.Fatalf("request %+v", r)
	}
}

// TestRefusals: every refusal the sidecar makes by itself is a DENY with its own reason, recorded,
// and never reaches the policy engine.
func TestRefusals(t *testing.T) {
	unknown := testFlow()
	unknown.Unknown = errors.New("no agent for cgroup /x")
	refuse := func(reason string) Intent { in := connectIntent(); in.Refuse = reason; return in }
	noHost := connectIntent()
	noHost.Host = ""
	kernel := Intent{Method: "KERNEL", Transport: "kernel", Mode: ModeKernel, Refuse: "kernel refused socket family: AF_PACKET"}
	for _, tc := range []struct {
		name   string
		flow   *Flow
		in     Intent
		stale  error
		reason string
	}{
		{"unknown agent", unknown, connectIntent(), nil, ReasonUnknownAgent},
		{"bad hello", testFlow(), refuse(ReasonBadHello), nil, ReasonBadHello},
		{"fronting", testFlow(), refuse(ReasonFronting), nil, ReasonFronting},
		{"connect in mitm", testFlow(), refuse(ReasonConnectInMITM), nil, ReasonConnectInMITM},
		{"handshake", testFlow(), refuse(ReasonHandshake + " (strict host): bad certificate"), nil, "mitm handshake failed (strict host): bad certificate"},
		{"no host", testFlow(), noHost, nil, ReasonNoHost},
		{"stale bundle", testFlow(), connectIntent(), errors.New("policy bundle stale"), "policy bundle stale"},
		{"unknown agent wins over stale", unknown, connectIntent(), errors.New("policy bundle stale"), ReasonUnknownAgent},
		// A kernel refusal read after its cgroup's agent left keeps what the kernel refused.
		{"kernel refusal of a departed agent", unknown, kernel, nil, "kernel refused socket family: AF_PACKET"},
		{"kernel refusal with a stale bundle", testFlow(), kernel, errors.New("policy bundle stale"), "kernel refused socket family: AF_PACKET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng, rec := &fakeEngine{d: allow}, &fakeRecorder{}
			j := New(Options{Engine: eng, Audit: rec, Stale: func() error { return tc.stale }, Log: zerolog.Nop()})
			v := j.Decide(context.Background(), tc.flow, tc.in)
			if v.Allowed() || v.Reason != tc.reason {
				t.Fatalf("verdict %s %q, want DENY %q", v.Outcome, v.Reason, tc.reason)
			}
			if ev := rec.last(); ev == nil || ev.Decision.Outcome != "DENY" || ev.Decision.Reason != tc.reason {
				t.Fatalf("record %+v", ev)
			}
			if len(eng.reqs) != 0 {
				t.Fatalf("the policy was asked: %+v", eng.reqs)
			}
		})
	}
}

// TestAuditFailureDenies: a decision whose record cannot be written is a DENY, whatever the policy.
func TestAuditFailureDenies(t *testing.T) {
	rec := &fakeRecorder{fail: errors.New("disk full")}
	j := New(Options{Engine: &fakeEngine{d: allow}, Audit: rec, Log: zerolog.Nop()})
	v := j.Decide(context.Background(), testFlow(), connectIntent())
	if v.Allowed() || v.Reason != ReasonAuditFailed {
		t.Fatalf("verdict %+v", v)
	}
	j.Complete(v, Result{BytesUp: 1})
	if rec.last() != nil {
		t.Fatal("nothing can be recorded")
	}
}

// TestEngineErrorDenies: a policy evaluation error is a DENY carrying the error.
func TestEngineErrorDenies(t *testing.T) {
	rec := &fakeRecorder{}
	j := New(Options{Engine: &fakeEngine{err: errors.New("capability expired")}, Audit: rec, Log: zerolog.Nop()})
	if v := j.Decide(context.Background(), testFlow(), connectIntent()); v.Allowed() || v.Reason != "capability expired" {
		t.Fatalf("verdict %+v", v)
	}
}

func TestNote(t *testing.T) {
	rec := &fakeRecorder{}
	j := New(Options{Engine: &fakeEngine{d: allow}, Audit: rec, Log: zerolog.Nop()})
	in := connectIntent()
	in.Note = ReasonFallback
	if v := j.Decide(context.Background(), testFlow(), in); v.Reason != "mitm fallback: permitted" {
		t.Fatalf("reason %q", v.Reason)
	}
	deny := New(Options{Engine: &fakeEngine{d: policies.Decision{Outcome: policies.Deny, Reason: "forbidden"}}, Audit: rec, Log: zerolog.Nop()})
	if v := deny.Decide(context.Background(), testFlow(), in); v.Reason != "forbidden" {
		t.Fatalf("a note must not soften a denial's reason: %q", v.Reason)
	}
}

// TestRecordShapes: L7 records carry method and path; DNS records carry the bare name and the query
// type; IPv6 hosts are bracketed with their port.
func TestRecordShapes(t *testing.T) {
	rec := &fakeRecorder{}
	d := allow
	d.Provider, d.Path = "anthropic", "/v1/messages"
	j := New(Options{Engine: &fakeEngine{d: d}, Audit: rec, Log: zerolog.Nop()})
	ctx := context.Background()

	j.Decide(ctx, testFlow(), Intent{Method: "POST", Host: "api.anthropic.com", Port: 443, Path: "/v1/messages?x=1", Transport: "https", Mode: ModeMITM, SNI: "api.anthropic.com"})
	r := rec.last().Envelope.Intent.Resource
	if r.Host != "api.anthropic.com" || r.Method != "POST" || r.Path != "/v1/messages" || r.Provider == nil || *r.Provider != "anthropic" {
		t.Fatalf("mitm resource %+v", r)
	}
	j.Decide(ctx, testFlow(), Intent{Method: policies.MethodDNS, Host: "paste.rs", Port: 53, Transport: "dns", Mode: ModeDNS, QType: "AAAA"})
	if r := rec.last().Envelope.Intent.Resource; r.Host != "paste.rs" || r.Method != "AAAA" {
		t.Fatalf("dns resource %+v", r)
	}
	j.Decide(ctx, testFlow(), Intent{Method: policies.MethodConnect, Host: "2001:db8::1", Port: 22, Transport: "tcp", Mode: ModeTCP})
	if r := rec.last().Envelope.Intent.Resource; r.Host != "[2001:db8::1]:22" {
		t.Fatalf("tcp resource %+v", r)
	}
	j.Decide(ctx, testFlow(), Intent{Method: policies.MethodConnect, Host: "api.anthropic.com", Port: 443, Transport: "tls", Mode: ModeMITM, SNI: "api.anthropic.com"})
	if r := rec.last().Envelope.Intent.Resource; r.Host != "api.anthropic.com:443" || r.Method != "" || r.Path != "" {
		t.Fatalf("an intercepted connection's own record is connection-level: %+v", r)
	}
	outside := testFlow()
	outside.OrigDst = netip.AddrPort{}
	j.Decide(ctx, outside, connectIntent())
	if od := rec.last().Envelope.Transport.OrigDst; od != "" {
		t.Fatalf("a flow the kernel did not redirect has no original destination: %q", od)
	}
}

// TestComplete: completions repeat the envelope, name the dialed address, and turn a failed allowed
// flow into an ABORT; a credential failure's detail is never recorded.
func TestComplete(t *testing.T) {
	rec := &fakeRecorder{}
	j := New(Options{Engine: &fakeEngine{d: allow}, Audit: rec, Log: zerolog.Nop()})
	ctx := context.Background()
	dialed := netip.MustParseAddrPort("127.0.0.2:443")

	v := j.Decide(ctx, testFlow(), connectIntent())
	j.Complete(v, Result{BytesUp: 10, BytesDown: 20, Duration: 3 * time.Millisecond, Dialed: dialed})
	ev := rec.last()
	if ev.Kind != audit.KindCompletion || ev.DecisionID != v.RecordID() || ev.Decision != nil ||
		ev.Result.BytesUp != 10 || ev.Result.BytesDown != 20 || ev.Result.DurationMS != 3 ||
		ev.Envelope.Transport.Dialed != "127.0.0.2:443" || ev.Envelope.Agent.PID != 42 {
		t.Fatalf("completion %+v %+v", ev, ev.Result)
	}

	v = j.Decide(ctx, testFlow(), connectIntent())
	refused := &connector.AddrError{Host: "api.example.com", Addr: netip.MustParseAddr("10.0.0.1"), Class: connector.Private}
	j.Complete(v, Failed(ErrorNetwork, refused, time.Now()))
	ev = rec.last()
	want := "connector_network_error: refused api.example.com: resolves to 10.0.0.1 (private)"
	if ev.Result.Error != want || ev.Decision == nil || ev.Decision.Outcome != "ABORT" || ev.Decision.Reason != want {
		t.Fatalf("refused address: %+v %+v", ev.Result, ev.Decision)
	}

	v = j.Decide(ctx, testFlow(), connectIntent())
	j.Complete(v, Failed(ErrorCredentials, errors.New("reading /etc/secret-token: permission denied"), time.Now()))
	if got := rec.last().Result.Error; got != ErrorCredentials || strings.Contains(got, "secret") {
		t.Fatalf("credential failure recorded as %q", got)
	}

	j.Complete(Verdict{}, Result{})
	if rec.last().Kind != audit.KindCompletion || len(rec.events) != 6 {
		t.Fatalf("a verdict without a record must not be completed: %d records", len(rec.events))
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{"example.com": "example.com:443", "::1": "[::1]:443", "10.0.0.1": "10.0.0.1:443"} {
		if got := HostPort(in, 443); got != want {
			t.Errorf("HostPort(%q) = %q", in, got)
		}
	}
}

// TestMonitorMode: an agent in monitor mode gets every decision made and recorded as in enforce
// mode, with enforced: false; a policy denial lets the flow proceed, the sidecar's own refusals and
// an unwritable record do not.
func TestMonitorMode(t *testing.T) {
	deny := policies.Decision{Outcome: policies.Deny, Reason: "forbidden by policy", MatchedPolicies: []string{"forbid-x"}}
	monitor := func() *Flow { f := testFlow(); f.Monitor = true; return f }
	ctx := context.Background()

	rec := &fakeRecorder{}
	j := New(Options{Engine: &fakeEngine{d: deny}, Audit: rec, Log: zerolog.Nop()})
	v := j.Decide(ctx, monitor(), connectIntent())
	ev := rec.last()
	if !v.Allowed() || !v.Monitored || v.Outcome != policies.Deny {
		t.Fatalf("monitored denial: %+v", v)
	}
	if ev.Decision.Outcome != "DENY" || ev.Decision.Enforced == nil || *ev.Decision.Enforced || ev.Decision.MatchedPolicies[0] != "forbid-x" {
		t.Fatalf("record %+v", ev.Decision)
	}
	j.Complete(v, Result{ErrClass: ErrorNetwork, Err: errors.New("reset")})
	if c := rec.last(); c.Decision == nil || c.Decision.Outcome != "ABORT" {
		t.Fatalf("a failed monitored flow is an ABORT: %+v", c.Decision)
	}

	// Enforce mode: the same denial stops the flow and says nothing of enforcement.
	if v := j.Decide(ctx, testFlow(), connectIntent()); v.Allowed() || v.Monitored || rec.last().Decision.Enforced != nil {
		t.Fatalf("enforce mode: %+v %+v", v, rec.last().Decision)
	}

	// The sidecar's own refusals stay refusals in monitor mode.
	in := connectIntent()
	in.Refuse = ReasonBadHello
	if v := j.Decide(ctx, monitor(), in); v.Allowed() || v.Monitored {
		t.Fatalf("a bad hello in monitor mode: %+v", v)
	}

	// An allowed decision in monitor mode is recorded as not enforced too.
	allowJ := New(Options{Engine: &fakeEngine{d: allow}, Audit: rec, Log: zerolog.Nop()})
	if v := allowJ.Decide(ctx, monitor(), connectIntent()); !v.Allowed() || v.Monitored || *rec.last().Decision.Enforced {
		t.Fatalf("allowed in monitor mode: %+v", v)
	}

	// No record, no flow: monitor mode cannot outlive the audit log.
	failing := New(Options{Engine: &fakeEngine{d: deny}, Audit: &fakeRecorder{fail: errors.New("disk full")}, Log: zerolog.Nop()})
	if v := failing.Decide(ctx, monitor(), connectIntent()); v.Allowed() || v.Reason != ReasonAuditFailed {
		t.Fatalf("monitored, audit failing: %+v", v)
	}
}

// TestObserve: every recorded decision is counted in its session once, after its record, with the
// outcome recorded — the sidecar's own refusals too, carrying agent and session; a decision that
// could not be recorded is not counted.
func TestObserve(t *testing.T) {
	eng, rec := &fakeEngine{d: allow}, &fakeRecorder{}
	j := New(Options{Engine: eng, Audit: rec, Log: zerolog.Nop()})
	ctx := context.Background()
	j.Decide(ctx, testFlow(), connectIntent())
	in := connectIntent()
	in.Refuse = ReasonFronting
	j.Decide(ctx, testFlow(), in)
	if len(eng.observed) != 2 || eng.observed[0].Outcome != policies.Allow || eng.observed[1].Outcome != policies.Deny ||
		eng.observed[1].AgentID != "agent-1" || eng.observed[1].SessionID != "s-1" || eng.observed[1].Reason != ReasonFronting {
		t.Fatalf("observed %+v", eng.observed)
	}
	rec.fail = errors.New("disk full")
	j.Decide(ctx, testFlow(), connectIntent())
	if len(eng.observed) != 2 {
		t.Fatalf("an unrecorded decision was counted: %+v", eng.observed[2:])
	}
}

// newRealJudge is a judge deciding with the real policy engine on policy (one .cedar file) and
// rules that classify every intent as communication.external.send.
func newRealJudge(t *testing.T, policy string) (*Judge, *fakeRecorder) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(t.TempDir(), "rules.toml")
	if err := os.WriteFile(rules, []byte("[[rules]]\nmethod = \"*\"\nhost = \"*\"\naction_class = \"communication.external.send\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eng, err := policies.New(policies.Config{Dir: dir}, policies.MappingConfig{RulesPath: rules, DefaultProtected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	rec := &fakeRecorder{}
	return New(Options{Engine: eng, Audit: rec, Log: zerolog.Nop()}), rec
}

func l7Intent(path string) Intent {
	return Intent{Method: "GET", Host: "api.example.com", Port: 443, Path: path, Transport: "https", Mode: ModeMITM,
		Content: &policies.Content{Header: http.Header{}}}
}

// TestSessionDenyCount: after one refusal in a session — a policy's or the sidecar's own — a
// deny_count > 0 forbid refuses what follows in that session, and not in another session of the
// same agent.
func TestSessionDenyCount(t *testing.T) {
	j, _ := newRealJudge(t, `@id("permit") permit (principal, action, resource);
@id("forbid-secret") forbid (principal, action, resource) when { resource.path like "/secret*" };
@id("after-a-denial") forbid (principal, action, resource) when { context.deny_count > 0 };
`)
	ctx := context.Background()
	session := func(id string) *Flow { f := testFlow(); f.SessionID = id; return f }
	if v := j.Decide(ctx, session("a"), l7Intent("/ok")); !v.Allowed() {
		t.Fatalf("first request: %+v", v.Decision)
	}
	if v := j.Decide(ctx, session("a"), l7Intent("/secret")); v.Allowed() {
		t.Fatalf("secret: %+v", v.Decision)
	}
	v := j.Decide(ctx, session("a"), l7Intent("/ok"))
	if v.Allowed() || !slices.Equal(v.MatchedPolicies, []string{"after-a-denial"}) || !slices.Equal(v.Fields, []string{"context.deny_count"}) {
		t.Fatalf("after the denial, same session: %+v", v.Decision)
	}
	if v := j.Decide(ctx, session("b"), l7Intent("/ok")); !v.Allowed() {
		t.Fatalf("another session: %+v", v.Decision)
	}
	in := l7Intent("/ok")
	in.Refuse = ReasonFronting
	j.Decide(ctx, session("c"), in)
	if v := j.Decide(ctx, session("c"), l7Intent("/ok")); v.Allowed() {
		t.Fatalf("after the sidecar's own refusal: %+v", v.Decision)
	}
}

// TestRecordContent: an L7 record summarizes the request's content (never a header value), its
// query redacted, the fields that decided and the remediation; a git request its repository and
// ref updates.
func TestRecordContent(t *testing.T) {
	rem := &policies.Remediation{Kind: policies.RemedyDefer, RetryAfter: 1500 * time.Millisecond}
	d := policies.Decision{Outcome: policies.Defer, Reason: "deferred by policy: retry after 1500 ms", ActionClass: "code.write",
		MatchedPolicies: []string{"permit", "slow-down"}, Fields: []string{"context.json.model"}, Remediation: rem,
		Path: "/o/r.git/git-receive-pack",
		Git: &policies.GitRequest{Service: policies.GitReceivePack, Owner: "o", Repo: "r", Push: true,
			Updates: []policies.RefUpdate{{Ref: "refs/heads/main", Old: "aa", New: "bb", Protected: true}, {Ref: "refs/heads/x", Old: "cc", New: "00", Delete: true}}}}
	rec := &fakeRecorder{}
	j := New(Options{Engine: &fakeEngine{d: d}, Audit: rec, Log: zerolog.Nop()})
	in := Intent{Method: "POST", Host: "git.test", Port: 443, Path: "/o/r.git/git-receive-pack?token=s3cret&x=1", Transport: "https", Mode: ModeMITM,
		Content: &policies.Content{Header: http.Header{"Content-Type": {"application/x-git-receive-pack-request; charset=x"}, "Authorization": {"Bearer s3cret"}},
			BodySize: 300, Body: make([]byte, 300)}}
	v := j.Decide(context.Background(), testFlow(), in)
	if v.Allowed() {
		t.Fatal("a DEFER is not allowed")
	}
	ev := rec.last()
	it, dec := ev.Envelope.Intent, ev.Decision
	if it.Resource.Query != "token=REDACTED&x=1" || it.Resource.Path != "/o/r.git/git-receive-pack" {
		t.Errorf("resource %+v", it.Resource)
	}
	if c := it.Content; c == nil || c.ContentType != "application/x-git-receive-pack-request" || c.BodySize != 300 || !c.BodyBuffered || c.BodyTruncated {
		t.Errorf("content %+v", it.Content)
	}
	g := it.Git
	if g == nil || g.Service != "git-receive-pack" || g.Owner != "o" || g.Repo != "r" || len(g.Updates) != 2 ||
		!g.Updates[0].Force || !g.Updates[0].Protected || g.Updates[1].Force || !g.Updates[1].Delete {
		t.Errorf("git %+v", g)
	}
	if dec.Outcome != "DEFER" || !slices.Equal(dec.Fields, []string{"context.json.model"}) || dec.Remediation == nil ||
		dec.Remediation.Kind != "defer" || dec.Remediation.RetryAfterMS != 1500 {
		t.Errorf("decision %+v %+v", dec, dec.Remediation)
	}
	line, err := json.Marshal(ev)
	if err != nil || strings.Contains(string(line), "s3cret") {
		t.Errorf("the record holds a credential: %s", line)
	}

	// A push of more refs than a record lists says how many there were.
	many := *d.Git
	many.Updates = make([]policies.RefUpdate, audit.MaxGitUpdates+5)
	d.Git = &many
	j = New(Options{Engine: &fakeEngine{d: d}, Audit: rec, Log: zerolog.Nop()})
	j.Decide(context.Background(), testFlow(), in)
	if g := rec.last().Envelope.Intent.Git; len(g.Updates) != audit.MaxGitUpdates || g.UpdatesTotal != audit.MaxGitUpdates+5 {
		t.Errorf("%d updates listed, total %d", len(g.Updates), g.UpdatesTotal)
	}
}

// TestMonitorModeRemediations: in monitor mode a DEFER or STEP_UP proceeds like a DENY, and a
// MODIFY redacts nothing; in enforce mode a MODIFY is allowed and redacts.
func TestMonitorModeRemediations(t *testing.T) {
	ctx := context.Background()
	monitor := testFlow()
	monitor.Monitor = true
	for _, o := range []policies.Outcome{policies.Defer, policies.StepUp} {
		j := New(Options{Engine: &fakeEngine{d: policies.Decision{Outcome: o}}, Audit: &fakeRecorder{}, Log: zerolog.Nop()})
		if v := j.Decide(ctx, monitor, l7Intent("/x")); !v.Allowed() || !v.Monitored {
			t.Errorf("%s in monitor mode: %+v", o, v)
		}
		if v := j.Decide(ctx, testFlow(), l7Intent("/x")); v.Allowed() {
			t.Errorf("%s enforced: %+v", o, v)
		}
	}
	mod := policies.Decision{Outcome: policies.Modify, Remediation: &policies.Remediation{Kind: policies.RemedyModify, RedactHeaders: []string{"x-debug"}}}
	j := New(Options{Engine: &fakeEngine{d: mod}, Audit: &fakeRecorder{}, Log: zerolog.Nop()})
	if v := j.Decide(ctx, testFlow(), l7Intent("/x")); !v.Allowed() || v.Monitored || !slices.Equal(v.Redact(), []string{"x-debug"}) {
		t.Errorf("MODIFY enforced: %+v redact %v", v, v.Redact())
	}
	if v := j.Decide(ctx, monitor, l7Intent("/x")); !v.Allowed() || v.Monitored || v.Redact() != nil {
		t.Errorf("MODIFY in monitor mode: %+v redact %v", v, v.Redact())
	}
}

// TestNeedsBody: the sidecar's own refusals need no body; otherwise the engine says.
func TestNeedsBody(t *testing.T) {
	eng := &fakeEngine{d: allow}
	j := New(Options{Engine: eng, Audit: &fakeRecorder{}, Log: zerolog.Nop()})
	if !j.NeedsBody(testFlow(), l7Intent("/x")) || j.MaxBodyBytes() != 1<<20 {
		t.Fatal("the engine's answer")
	}
	unknown := testFlow()
	unknown.Unknown = errors.New("no agent")
	refused := l7Intent("/x")
	refused.Refuse = ReasonFronting
	noContent := l7Intent("/x")
	noContent.Content = nil
	if j.NeedsBody(unknown, l7Intent("/x")) || j.NeedsBody(testFlow(), refused) || j.NeedsBody(testFlow(), noContent) {
		t.Fatal("a refused intent needs no body")
	}
}

// TestRefusalRecordsLimited: every refusal's record goes through the rate limit under its class;
// what lets a flow proceed — an ALLOW, a monitored denial — never does.
func TestRefusalRecordsLimited(t *testing.T) {
	ctx := context.Background()
	deny := policies.Decision{Outcome: policies.Deny, Reason: "no policy permits"}
	for _, tc := range []struct {
		name    string
		d       policies.Decision
		flow    func(*Flow)
		in      func(*Intent)
		class   string // "" = not limited
		written bool
	}{
		{name: "allow", d: allow, written: true},
		{name: "policy deny", d: deny, class: ClassPolicy, written: true},
		{name: "monitored deny", d: deny, flow: func(f *Flow) { f.Monitor = true }, written: true},
		{name: "own refusal", d: allow, in: func(in *Intent) { in.Refuse = ReasonBadHello }, class: ClassRefused, written: true},
		{name: "own refusal in monitor mode", d: allow, flow: func(f *Flow) { f.Monitor = true },
			in: func(in *Intent) { in.Refuse = ReasonBadHello }, class: ClassRefused, written: true},
		{name: "unknown agent", d: allow, flow: func(f *Flow) { f.Unknown = errors.New("no agent") }, class: ClassUnknown, written: true},
		{name: "kernel", d: allow, in: func(in *Intent) { in.Mode, in.Refuse = ModeKernel, "kernel refused udp: …" }, class: ClassKernel, written: true},
		{name: "dns", d: deny, in: func(in *Intent) { in.Mode, in.Method = ModeDNS, policies.MethodDNS }, class: ClassDNS, written: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, suppress := range []bool{false, true} {
				rec := &fakeRecorder{suppress: map[string]bool{}}
				if suppress {
					for _, c := range []string{ClassKernel, ClassDNS, ClassUnknown, ClassRefused, ClassPolicy, ClassLimit} {
						rec.suppress[c] = true
					}
				}
				j := New(Options{Engine: &fakeEngine{d: tc.d}, Audit: rec, Log: zerolog.Nop()})
				f, in := testFlow(), connectIntent()
				if tc.flow != nil {
					tc.flow(f)
				}
				if tc.in != nil {
					tc.in(&in)
				}
				v := j.Decide(ctx, f, in)
				wantLimited := []string(nil)
				if tc.class != "" {
					wantLimited = []string{tc.class}
				}
				if !slices.Equal(rec.limited, wantLimited) {
					t.Errorf("suppress=%v: limited as %v, want %v", suppress, rec.limited, wantLimited)
				}
				written := tc.class == "" || !suppress
				if got := len(rec.events) == 1; got != written {
					t.Errorf("suppress=%v: record written %v, want %v", suppress, got, written)
				}
				if written != (v.RecordID() != "") {
					t.Errorf("suppress=%v: RecordID %q with the record written %v", suppress, v.RecordID(), written)
				}
				if tc.class != "" && v.Allowed() {
					t.Errorf("suppress=%v: a refusal was allowed: %+v", suppress, v)
				}
			}
		})
	}
}
