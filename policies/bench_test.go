package policies

import (
	"context"
	"fmt"
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
			ctx, r := context.Background(), benchRequest()
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
		})
	}
}

// BenchmarkCedarFullScan is the baseline the index avoids: Cedar evaluating all 1,000 policies.
func BenchmarkCedarFullScan(b *testing.B) {
	set, err := ParseFiles(benchPolicies(1000), nil)
	if err != nil {
		b.Fatal(err)
	}
	full := cedar.NewPolicySet()
	for _, p := range set.policies {
		full.Add(cedar.PolicyID(p.id), p.cedar)
	}
	r := benchRequest()
	n, _ := normalize(&r)
	ents := &requestEntities{resource: resourceEntity(&n, "anthropic"), actions: set.schema.actions}
	req := types.Request{
		Principal: types.NewEntityUID(AgentType, types.String(n.agent)),
		Action:    types.NewEntityUID(ActionType, "model.inference.chat"),
		Resource:  ents.resource.UID,
		Context:   contextRecord(&n, 0),
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
