package judge

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/policies"
)

// capturing is the real policy engine, remembering the last request it was given.
type capturing struct {
	*policies.Engine
	last policies.Request
}

func (c *capturing) Decide(ctx context.Context, r policies.Request) (policies.Decision, error) {
	c.last = r
	return c.Engine.Decide(ctx, r)
}

// TestObservedInvertsTheRecord: for every mode, the intent read back from the decision record is
// the one the policy engine was given — attribution, method, host, port, path (without its query),
// transport — and the engine decides it as it did.
func TestObservedInvertsTheRecord(t *testing.T) {
	eng, err := policies.New(policies.Config{}, policies.DefaultMappingConfig(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	spy, rec := &capturing{Engine: eng}, &fakeRecorder{}
	j := New(Options{Engine: spy, Audit: rec, Log: zerolog.Nop()})
	for _, in := range []Intent{
		connectIntent(),
		{Method: policies.MethodConnect, Host: "db.example.com", Port: 5432, Transport: "tcp", Mode: ModeTCP},
		{Method: policies.MethodConnect, Host: "2001:db8::7", Port: 8443, Transport: "tls", Mode: ModeConnect},
		{Method: policies.MethodDNS, Host: "api.openai.com", Port: 53, Transport: "dns", Mode: ModeDNS, QType: "AAAA"},
		{Method: "POST", Host: "API.OpenAI.com", Port: 443, Path: "/v1/chat/completions?stream=true", Transport: "https", Mode: ModeMITM, SNI: "api.openai.com"},
		{Method: "GET", Host: "plain.example.com", Port: 8080, Path: "/a/../b//c", Transport: "http", Mode: ModeHTTP},
		{Method: "GET", Host: "api.anthropic.com", Port: 443, Path: "/v1/models", Transport: "https", Mode: ModeMITM, Note: ReasonFallback},
		{Method: policies.MethodConnect, Host: "api.github.com", Port: 443, Transport: "tls", Mode: ModeMITM, SNI: "api.github.com"},
	} {
		for _, monitor := range []bool{false, true} {
			f := testFlow()
			f.Monitor = monitor
			v := j.Decide(context.Background(), f, in)
			sent := spy.last
			o, skip, ok := Observed(audit.Record{File: "audit.jsonl", Line: 7, Event: rec.last()})
			if !ok || skip != "" {
				t.Fatalf("%+v: decision %v, skip %q", in, ok, skip)
			}
			got := o.Request
			wantPath, _, _ := strings.Cut(sent.Path, "?")
			if got.AgentID != sent.AgentID || got.SessionID != sent.SessionID || got.Method != sent.Method ||
				got.Transport != sent.Transport || got.PID != sent.PID || got.UID != sent.UID || got.Exe != sent.Exe ||
				got.Cgroup != sent.Cgroup || got.Port != sent.Port || !strings.EqualFold(got.Host, sent.Host) {
				t.Errorf("%+v:\n read back %+v\n engine got %+v", in, got, sent)
			}
			if np, _ := policies.NormalizePath(wantPath); in.Path != "" && got.Path != np {
				t.Errorf("%+v: path %q, want %q", in, got.Path, np)
			}
			again, err := eng.Decide(context.Background(), got)
			if err != nil {
				t.Fatal(err)
			}
			if again.Outcome != v.Outcome && !strings.HasPrefix(v.Reason, ReasonFallback) || again.ActionClass != v.ActionClass ||
				again.Host != v.Host || again.Path != v.Path || again.Provider != v.Provider {
				t.Errorf("%+v: judged again %s %s %s%s, first %s %s %s%s", in, again.Outcome, again.ActionClass, again.Host, again.Path,
					v.Outcome, v.ActionClass, v.Host, v.Path)
			}
			if o.Outcome != v.Outcome || o.ActionClass != v.ActionClass || o.Enforced == monitor || o.Where != "audit.jsonl:7" ||
				o.Provider != v.Provider && in.Method != policies.MethodConnect || len(o.Policies) != len(v.MatchedPolicies) {
				t.Errorf("%+v (monitor %v): observed %+v, verdict %+v", in, monitor, o, v.Decision)
			}
		}
	}
}

// Refusals the sidecar makes by itself, kernel refusals, completions and the log's own records are
// not policy decisions to replay.
func TestObservedSkips(t *testing.T) {
	rec := &fakeRecorder{}
	j := New(Options{Engine: &fakeEngine{d: allow}, Audit: rec, Log: zerolog.Nop()})
	read := func() (string, bool) {
		_, skip, ok := Observed(audit.Record{Event: rec.last()})
		return skip, ok
	}
	in := connectIntent()
	in.Refuse = ReasonBadHello
	j.Decide(context.Background(), testFlow(), in)
	if skip, ok := read(); !ok || !strings.Contains(skip, "own refusal ("+ReasonBadHello+")") || !rec.last().Decision.SidecarRefusal {
		t.Errorf("own refusal: %q %v", skip, ok)
	}
	f := testFlow()
	f.Unknown = errors.New("no agent")
	j.Decide(context.Background(), f, connectIntent())
	if skip, _ := read(); !strings.Contains(skip, "own refusal (unknown agent)") {
		t.Errorf("unknown agent: %q", skip)
	}
	j.Decide(context.Background(), testFlow(), Intent{Method: "KERNEL", Host: "10.0.0.1", Port: 22, Transport: "kernel", Mode: ModeKernel,
		Refuse: "kernel refused udp: port 22"})
	if skip, _ := read(); !strings.Contains(skip, "kernel refusal") {
		t.Errorf("kernel: %q", skip)
	}
	v := j.Decide(context.Background(), testFlow(), connectIntent())
	if skip, ok := read(); skip != "" || !ok || rec.last().Decision.SidecarRefusal {
		t.Errorf("a policy decision: %q %v", skip, ok)
	}
	j.Complete(v, Result{BytesUp: 1})
	if _, ok := read(); ok {
		t.Error("a completion read as a decision")
	}
	if _, _, ok := Observed(audit.Record{Event: &audit.Event{Kind: audit.KindLog, Log: &audit.LogRecord{Event: audit.LogOpen}}}); ok {
		t.Error("a log record read as a decision")
	}
}
