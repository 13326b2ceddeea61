package judge

import (
	"context"
	"errors"
	"net/netip"
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

// fakeEngine answers every request with one decision and remembers the requests.
type fakeEngine struct {
	mu   sync.Mutex
	d    policies.Decision
	err  error
	reqs []policies.Request
}

func (e *fakeEngine) Decide(_ context.Context, r policies.Request) (policies.Decision, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reqs = append(e.reqs, r)
	return e.d, e.err
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
