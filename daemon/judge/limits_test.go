package judge

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
)

// limiterRig is a Limiter on a fake clock whose scheduled flushes the test runs itself.
type limiterRig struct {
	*Limiter
	rec       *fakeRecorder
	clock     time.Time
	scheduled []func()
	waits     []time.Duration
}

func newLimiterRig(cfg LimitsConfig) *limiterRig {
	r := &limiterRig{rec: &fakeRecorder{}, clock: time.Unix(1_700_000_000, 0)}
	j := New(Options{Engine: &fakeEngine{d: allow}, Audit: r.rec, Log: zerolog.Nop()})
	r.Limiter = NewLimiter(cfg, j)
	r.now = func() time.Time { return r.clock }
	r.after = func(d time.Duration, f func()) {
		r.waits = append(r.waits, d)
		r.scheduled = append(r.scheduled, f)
	}
	return r
}

func (r *limiterRig) advance(d time.Duration) { r.clock = r.clock.Add(d) }

// runScheduled runs the flushes scheduled so far, as their timers would.
func (r *limiterRig) runScheduled() {
	fs := r.scheduled
	r.scheduled = nil
	for _, f := range fs {
		f()
	}
}

func (r *limiterRig) records() []*audit.Event {
	r.rec.mu.Lock()
	defer r.rec.mu.Unlock()
	return append([]*audit.Event(nil), r.rec.events...)
}

func agentFlow(id string, pid uint32) *Flow {
	f := testFlow()
	f.AgentID, f.PID = id, pid
	return f
}

func TestLimiterMaxFlows(t *testing.T) {
	r := newLimiterRig(LimitsConfig{MaxFlows: 3, NewFlowsPerSecond: 1000, NewFlowsBurst: 1000})
	var releases []func()
	for i := range 3 {
		release, ok := r.Admit(agentFlow("a", uint32(i)))
		if !ok {
			t.Fatalf("flow %d refused under the cap", i)
		}
		releases = append(releases, release)
	}
	if _, ok := r.Admit(agentFlow("a", 9)); ok {
		t.Fatal("a fourth concurrent flow was admitted with max_flows 3")
	}
	// Another agent is unaffected.
	if _, ok := r.Admit(agentFlow("b", 10)); !ok {
		t.Fatal("agent b refused because of agent a")
	}
	// Releasing twice frees one slot, not two.
	releases[0]()
	releases[0]()
	if r.Active(agentFlow("a", 0)) != 2 {
		t.Fatalf("active = %d after one release, want 2", r.Active(agentFlow("a", 0)))
	}
	if _, ok := r.Admit(agentFlow("a", 11)); !ok {
		t.Fatal("a slot freed by a release was not given again")
	}
	if _, ok := r.Admit(agentFlow("a", 12)); ok {
		t.Fatal("a double release freed two slots")
	}
}

func TestLimiterRate(t *testing.T) {
	r := newLimiterRig(LimitsConfig{MaxFlows: 1000, NewFlowsPerSecond: 10, NewFlowsBurst: 5})
	for i := range 5 {
		if _, ok := r.Admit(agentFlow("a", uint32(i))); !ok {
			t.Fatalf("flow %d of the burst refused", i)
		}
	}
	if _, ok := r.Admit(agentFlow("a", 5)); ok {
		t.Fatal("a sixth flow admitted at once with new_flows_burst 5")
	}
	r.advance(100 * time.Millisecond) // one token at 10/s
	if _, ok := r.Admit(agentFlow("a", 6)); !ok {
		t.Fatal("no flow admitted after the bucket refilled one token")
	}
	if _, ok := r.Admit(agentFlow("a", 7)); ok {
		t.Fatal("two flows admitted for one token")
	}
	r.advance(time.Hour) // refills to the burst, no more
	for i := range 5 {
		if _, ok := r.Admit(agentFlow("a", uint32(8+i))); !ok {
			t.Fatalf("flow %d refused after a long pause", i)
		}
	}
	if _, ok := r.Admit(agentFlow("a", 20)); ok {
		t.Fatal("the bucket filled past new_flows_burst")
	}
}

func TestLimiterPerAgentOverride(t *testing.T) {
	cfg := LimitsConfig{MaxFlows: 1, NewFlowsPerSecond: 100, NewFlowsBurst: 100,
		Agents: map[string]AgentLimits{"busy": {MaxFlows: 3}}}
	if got := cfg.For("busy"); got != (AgentLimits{3, 100, 100}) {
		t.Fatalf("For(busy) = %+v", got)
	}
	r := newLimiterRig(cfg)
	for i := range 3 {
		if _, ok := r.Admit(agentFlow("busy", uint32(i))); !ok {
			t.Fatalf("busy flow %d refused under its own max_flows", i)
		}
	}
	r.Admit(agentFlow("quiet", 1))
	if _, ok := r.Admit(agentFlow("quiet", 2)); ok {
		t.Fatal("the override applied to another agent")
	}
}

// TestLimiterRecords: the first refusal is recorded at once; those that follow within a second are
// counted into one record when the second is up, naming the last refused process.
func TestLimiterRecords(t *testing.T) {
	r := newLimiterRig(LimitsConfig{MaxFlows: 1, NewFlowsPerSecond: 100, NewFlowsBurst: 100})
	r.Admit(agentFlow("a", 1))
	r.Admit(agentFlow("a", 2))
	recs := r.records()
	if len(recs) != 1 || !strings.Contains(recs[0].Decision.Reason, "1 connection(s) refused") ||
		!strings.HasPrefix(recs[0].Decision.Reason, ReasonMaxFlows+" (max_flows 1)") || recs[0].Envelope.Agent.PID != 2 {
		t.Fatalf("first refusal: %+v", recs)
	}
	if r.rec.limited[len(r.rec.limited)-1] != ClassLimit {
		t.Errorf("limit record appended as %v, want class %s", r.rec.limited, ClassLimit)
	}
	for pid := uint32(3); pid < 50; pid++ {
		r.advance(10 * time.Millisecond)
		r.Admit(agentFlow("a", pid))
	}
	if n := len(r.records()); n != 1 {
		t.Fatalf("%d records within the first second", n)
	}
	if len(r.scheduled) != 1 || r.waits[0] <= 0 || r.waits[0] > time.Second {
		t.Fatalf("scheduled %d flushes, waits %v: want one within a second", len(r.scheduled), r.waits)
	}
	r.advance(600 * time.Millisecond)
	r.runScheduled()
	recs = r.records()
	if len(recs) != 2 || !strings.Contains(recs[1].Decision.Reason, ": 47 connection(s) refused") || recs[1].Envelope.Agent.PID != 49 {
		t.Fatalf("second record: %+v", recs[len(recs)-1].Decision)
	}
	if recs[1].Decision.Outcome != "DENY" || recs[1].Envelope.Transport.Mode != string(ModeTCP) || recs[1].Envelope.Agent.AgentID != "a" {
		t.Errorf("record: %+v %+v", recs[1].Envelope, recs[1].Decision)
	}
	// Nothing pending: the timer does not fire again, and a refusal a second later is recorded at once.
	r.runScheduled()
	r.advance(time.Second)
	r.Admit(agentFlow("a", 60))
	if n := len(r.records()); n != 3 {
		t.Fatalf("%d records after a refusal a second later, want 3", n)
	}
}

func TestLimiterUnknownAgentsByCgroup(t *testing.T) {
	r := newLimiterRig(LimitsConfig{MaxFlows: 1, NewFlowsPerSecond: 100, NewFlowsBurst: 100})
	unknown := func(cg string) *Flow {
		f := testFlow()
		f.AgentID, f.Unknown, f.Cgroup = "", errors.New("no agent"), cg
		return f
	}
	r.Admit(unknown("/x/one"))
	if _, ok := r.Admit(unknown("/x/two")); !ok {
		t.Fatal("two unknown cgroups share one budget")
	}
	if _, ok := r.Admit(unknown("/x/one")); ok {
		t.Fatal("an unknown cgroup is not limited")
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := DefaultLimitsConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := LimitsConfig{MaxFlows: 0, NewFlowsPerSecond: -1, NewFlowsBurst: 0,
		Agents: map[string]AgentLimits{"x": {MaxFlows: -2}, "": {}}}
	err := bad.Validate()
	for _, key := range []string{"limits.max_flows", "limits.new_flows_per_second", "limits.new_flows_burst",
		"limits.agents.x.max_flows", "limits.agents: an empty agent id"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("no error naming %s: %v", key, err)
		}
	}
	// An override may leave keys out.
	ok := DefaultLimitsConfig()
	ok.Agents = map[string]AgentLimits{"x": {NewFlowsBurst: 10}}
	if err := ok.Validate(); err != nil {
		t.Errorf("partial override: %v", err)
	}
}

// BenchmarkAdmitRelease is what every accepted connection pays for the flow limits: one Admit and
// one release, with many agents at once.
func BenchmarkAdmitRelease(b *testing.B) {
	l := NewLimiter(LimitsConfig{MaxFlows: 1 << 20, NewFlowsPerSecond: 1e6, NewFlowsBurst: 1 << 20}, nil)
	flows := make([]*Flow, 64)
	for i := range flows {
		flows[i] = agentFlow("agent-"+string(rune('a'+i%26))+string(rune('a'+i/26)), uint32(i))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			release, ok := l.Admit(flows[i%len(flows)])
			if !ok {
				b.Fatal("refused")
			}
			release()
			i++
		}
	})
}
