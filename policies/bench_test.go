package policies

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	"github.com/rs/zerolog"
)

// benchPolicies writes n policies spread over n/10 agents and every action class: nine in ten are
// agent-bound permits with a host condition, one in ten an unbound forbid, as a large deployment's
// set would look. The first permits the benchmark request; the second reads the context.
func benchPolicies(n int) map[string][]byte {
	classes := EmbeddedSchema().ActionClasses()
	agents := max(1, n/10)
	var b strings.Builder
	// The benchmark request's own permit, so that every size has one, and an unbound forbid that
	// reads the context, so that every decision builds the full Cedar request.
	b.WriteString(`permit (principal == Firma::Agent::"agent-0", action == Firma::Action::"model.inference.chat", resource) when { resource.host == "api.anthropic.com" };` + "\n")
	b.WriteString(`forbid (principal, action, resource) when { context.uid == 0 && context.exe like "*/sh" };` + "\n")
	for i := 2; i < n; i++ {
		class := classes[i%len(classes)]
		if i%10 == 9 {
			fmt.Fprintf(&b, "forbid (principal, action == Firma::Action::%q, resource) when { resource.host == \"blocked%d.example\" };\n", class, i)
			continue
		}
		fmt.Fprintf(&b, "permit (principal == Firma::Agent::\"agent-%d\", action == Firma::Action::%q, resource) when { resource.host like \"*.host%d.example\" || resource.host == \"api.anthropic.com\" };\n", i%agents, class, i)
	}
	return map[string][]byte{"bench.cedar": []byte(b.String())}
}

// benchRequest is an L7 request the embedded rules classify as model.inference.chat.
func benchRequest() Request {
	return Request{
		AgentID: "agent-0", SessionID: "s-1", Method: "POST", Host: "api.anthropic.com", Port: 443,
		Path: "/v1/messages?beta=true", Transport: "https", Time: time.Unix(1_767_225_600, 0),
		PID: 4242, UID: 1000, Exe: "/usr/bin/node", Cgroup: "/firma-agents.slice/agent-0",
	}
}

// BenchmarkDecide measures the whole pipeline (normalize, classify, Cedar on the indexed
// candidates) for sets of 10, 100 and 1,000 policies, reporting p50 and p99 latency and the
// allocations per decision.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			e, err := New(Config{}, DefaultMappingConfig(), zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			if err := e.LoadBundle(benchPolicies(n), nil); err != nil {
				b.Fatal(err)
			}
			benchDecide(b, e, benchRequest())
		})
	}
}

// benchDecide times Decide on r, which must be allowed, reporting p50, p99 and allocations.
func benchDecide(b *testing.B, e *Engine, r Request) {
	ctx := context.Background()
	if d, err := e.Decide(ctx, r); err != nil || d.Outcome != Allow {
		b.Fatalf("benchmark request not allowed: %+v, %v", d, err)
	}
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		d, _ := e.Decide(ctx, r)
		el := time.Since(start)
		if d.Outcome != Allow {
			b.Fatal("decision changed")
		}
		if len(samples) < cap(samples) {
			samples = append(samples, el)
		}
	}
	b.StopTimer()
	reportPercentiles(b, samples)
}

// BenchmarkCedarFullScan is the baseline the index avoids: Cedar evaluating all 1,000 policies.
func BenchmarkCedarFullScan(b *testing.B) {
	set, err := ParseFiles(benchPolicies(1000), nil)
	if err != nil {
		b.Fatal(err)
	}
	full := cedarSet(set.policies...)
	r := benchRequest()
	n, _ := normalize(&r)
	ents := &requestEntities{resource: resourceEntity(&n, "anthropic"), actions: set.schema.actions}
	req := types.Request{
		Principal: types.NewEntityUID(AgentType, types.String(n.agent)),
		Action:    types.NewEntityUID(ActionType, "model.inference.chat"),
		Resource:  ents.resource.UID,
		Context:   testContext(&n),
	}
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		cedar.Authorize(full, ents, req)
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(start))
		}
	}
	b.StopTimer()
	reportPercentiles(b, samples)
}

func reportPercentiles(b *testing.B, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	at := func(q float64) float64 { return float64(samples[int(q*float64(len(samples)-1))].Nanoseconds()) }
	b.ReportMetric(at(0.50), "p50-ns")
	b.ReportMetric(at(0.99), "p99-ns")
}

// BenchmarkDecideL7 is BenchmarkDecide at 1,000 policies plus the L7 features on the request's own
// candidates: a JSON-body forbid ("only this model"), a session forbid (deny_count) and a rate
// forbid (actions_last_hour), on a chat request with a 1 KiB JSON body. Its session has history.
func BenchmarkDecideL7(b *testing.B) {
	files := benchPolicies(1000)
	files["l7.cedar"] = []byte(`
forbid (principal, action == Firma::Action::"model.inference.chat", resource)
unless { context.json has model && context.json.model == "claude-haiku-4-5" };
forbid (principal, action, resource) when { context.deny_count > 3 };
@defer("1000")
forbid (principal, action in Firma::Action::"model", resource)
when { context.actions_last_hour.hasTag("model") && context.actions_last_hour.getTag("model") >= 1000000 };
`)
	e, err := New(Config{}, DefaultMappingConfig(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	if err := e.LoadBundle(files, nil); err != nil {
		b.Fatal(err)
	}
	r := benchRequest()
	body := []byte(`{"model":"claude-haiku-4-5","max_tokens":1024,"messages":[{"role":"user","content":"` + strings.Repeat("x", 900) + `"}]}`)
	r.Content = Content{Header: http.Header{"Content-Type": {"application/json"}}, BodySize: int64(len(body)), Body: body}
	for i := 0; i < 50; i++ {
		d, _ := e.Decide(context.Background(), r)
		e.Observe(d)
	}
	benchDecide(b, e, r)
}

// BenchmarkNeedsBody is the per-request cost of asking whether to buffer the body.
func BenchmarkNeedsBody(b *testing.B) {
	e, err := New(Config{}, DefaultMappingConfig(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	if err := e.LoadBundle(benchPolicies(1000), nil); err != nil {
		b.Fatal(err)
	}
	r := benchRequest()
	r.Content.BodySize = 1024
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if e.NeedsBody(r) {
			b.Fatal("no policy reads the body")
		}
	}
}
