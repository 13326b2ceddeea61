package judge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/openfirma/firma/policies"
)

// LimitsConfig is [sidecar.limits]: what one agent can make the sidecar hold. Each flow an agent
// opens costs the sidecar two descriptors (the agent's side and the upstream's) out of a process
// limit (RLIMIT_NOFILE) shared by every agent; without a cap one agent could starve the others.
type LimitsConfig struct {
	// MaxFlows caps an agent's concurrent flows (redirected connections, explicit-proxy
	// connections — each with whatever it tunnels — and DNS-over-TCP connections).
	MaxFlows int `toml:"max_flows"`
	// NewFlowsPerSecond and NewFlowsBurst cap how fast an agent opens flows: a token bucket
	// refilled at NewFlowsPerSecond up to NewFlowsBurst.
	NewFlowsPerSecond float64 `toml:"new_flows_per_second"`
	NewFlowsBurst     int     `toml:"new_flows_burst"`
	// Agents overrides any of the three for one agent id ([sidecar.limits.agents.<id>]); a key it
	// leaves out keeps the value above.
	Agents map[string]AgentLimits `toml:"agents"`
}

// AgentLimits is one agent's [sidecar.limits.agents.<id>]; zero keeps [sidecar.limits]'s value.
type AgentLimits struct {
	MaxFlows          int     `toml:"max_flows"`
	NewFlowsPerSecond float64 `toml:"new_flows_per_second"`
	NewFlowsBurst     int     `toml:"new_flows_burst"`
}

// The defaults: a busy coding agent (a package manager fetching in parallel, a browser, language
// servers) holds a few hundred connections and opens dozens a second; 1024 flows is about 2048
// descriptors, a tenth of a 20,000 limit.
const (
	DefaultMaxFlows          = 1024
	DefaultNewFlowsPerSecond = 100
	DefaultNewFlowsBurst     = 500
	maxMaxFlows              = 1_000_000
)

// DefaultLimitsConfig is [sidecar.limits] when the file leaves it out.
func DefaultLimitsConfig() LimitsConfig {
	return LimitsConfig{MaxFlows: DefaultMaxFlows, NewFlowsPerSecond: DefaultNewFlowsPerSecond, NewFlowsBurst: DefaultNewFlowsBurst}
}

// Validate checks the section; errors name keys relative to [sidecar].
func (c LimitsConfig) Validate() error {
	var errs []error
	check := func(prefix string, l AgentLimits, zeroOK bool) {
		if l.MaxFlows < 0 || l.MaxFlows > maxMaxFlows || l.MaxFlows == 0 && !zeroOK {
			errs = append(errs, fmt.Errorf("%smax_flows: %d is not between 1 and %d", prefix, l.MaxFlows, maxMaxFlows))
		}
		// NaN fails both comparisons, so it is caught by the first.
		if !(l.NewFlowsPerSecond >= 0 && l.NewFlowsPerSecond <= 1e6) || l.NewFlowsPerSecond == 0 && !zeroOK {
			errs = append(errs, fmt.Errorf("%snew_flows_per_second: %v is not between 0 (excluded) and 1e6", prefix, l.NewFlowsPerSecond))
		}
		if l.NewFlowsBurst < 0 || l.NewFlowsBurst > maxMaxFlows || l.NewFlowsBurst == 0 && !zeroOK {
			errs = append(errs, fmt.Errorf("%snew_flows_burst: %d is not between 1 and %d", prefix, l.NewFlowsBurst, maxMaxFlows))
		}
	}
	check("limits.", AgentLimits{c.MaxFlows, c.NewFlowsPerSecond, c.NewFlowsBurst}, false)
	for id, l := range c.Agents {
		if id == "" {
			errs = append(errs, errors.New("limits.agents: an empty agent id"))
		}
		check(fmt.Sprintf("limits.agents.%s.", id), l, true)
	}
	return errors.Join(errs...)
}

// For is the limits of agent id.
func (c LimitsConfig) For(id string) AgentLimits {
	l := AgentLimits{c.MaxFlows, c.NewFlowsPerSecond, c.NewFlowsBurst}
	if o, ok := c.Agents[id]; ok && id != "" {
		l.MaxFlows = cmp.Or(o.MaxFlows, l.MaxFlows)
		l.NewFlowsPerSecond = cmp.Or(o.NewFlowsPerSecond, l.NewFlowsPerSecond)
		l.NewFlowsBurst = cmp.Or(o.NewFlowsBurst, l.NewFlowsBurst)
	}
	return l
}

// Reasons of flow-limit refusals.
const (
	ReasonMaxFlows = "flow limit: concurrent flows"
	ReasonFlowRate = "flow limit: new flows per second"
)

// limitRecordEvery is how often, at most, one agent's flow-limit refusals are recorded: each record
// counts the refusals it stands for.
const limitRecordEvery = time.Second

// maxTrackedAgents bounds the Limiter's memory: past it, idle agents are forgotten.
const maxTrackedAgents = 10_000

// Limiter enforces LimitsConfig: Admit takes a flow slot for an agent, or refuses it. Refusals are
// recorded by the judge, at most one record per agent a second, each with the count of refusals
// it stands for. It is safe for concurrent use.
type Limiter struct {
	cfg   LimitsConfig
	judge *Judge
	now   func() time.Time
	after func(time.Duration, func()) // time.AfterFunc; tests run the function themselves

	mu     sync.Mutex
	agents map[limitKey]*load
}

// load is what one agent holds and owes.
type load struct {
	active int
	tokens float64
	filled time.Time // tokens were last refilled at
	// Refusals not recorded yet: how many, the last flow and reason; when the last record went out,
	// and whether one is scheduled.
	pending   int64
	flow      *Flow
	reason    string
	recorded  time.Time
	scheduled bool
}

// NewLimiter builds a Limiter for cfg (validated) that records through j.
func NewLimiter(cfg LimitsConfig, j *Judge) *Limiter {
	return &Limiter{cfg: cfg, judge: j, now: time.Now, after: func(d time.Duration, f func()) { time.AfterFunc(d, f) },
		agents: map[limitKey]*load{}}
}

// limitKey is who a flow counts against: its agent, or its cgroup when no agent covers it.
type limitKey struct{ agent, cgroup string }

func keyOf(f *Flow) limitKey {
	if f.AgentID != "" && f.Unknown == nil {
		return limitKey{agent: f.AgentID}
	}
	return limitKey{cgroup: f.Cgroup}
}

// Admit takes one flow slot for f's agent. When the agent is over a limit it returns false and the
// refusal is counted for the agent's next limit record; otherwise release must be called, once,
// when the flow ends.
func (l *Limiter) Admit(f *Flow) (release func(), ok bool) {
	key := keyOf(f)
	lim := l.cfg.For(f.AgentID)
	now := l.now()
	l.mu.Lock()
	a := l.agents[key]
	if a == nil {
		if len(l.agents) >= maxTrackedAgents {
			l.forgetIdle()
		}
		a = &load{tokens: float64(lim.NewFlowsBurst), filled: now}
		l.agents[key] = a
	}
	if el := now.Sub(a.filled); el > 0 {
		a.tokens = min(float64(lim.NewFlowsBurst), a.tokens+el.Seconds()*lim.NewFlowsPerSecond)
		a.filled = now
	}
	var reason string
	switch {
	case a.active >= lim.MaxFlows:
		reason = fmt.Sprintf("%s (max_flows %d)", ReasonMaxFlows, lim.MaxFlows)
	case a.tokens < 1:
		reason = fmt.Sprintf("%s (new_flows_per_second %g, new_flows_burst %d)", ReasonFlowRate, lim.NewFlowsPerSecond, lim.NewFlowsBurst)
	default:
		a.active++
		a.tokens--
		l.mu.Unlock()
		var once sync.Once
		return func() { once.Do(func() { l.release(key) }) }, true
	}
	a.pending++
	a.flow, a.reason = f, reason
	var flushNow bool
	if !a.scheduled {
		a.scheduled = true
		wait := limitRecordEvery - now.Sub(a.recorded)
		if wait <= 0 {
			flushNow = true
		} else {
			l.after(wait, func() { l.flush(key) })
		}
	}
	l.mu.Unlock()
	if flushNow {
		l.flush(key)
	}
	return nil, false
}

func (l *Limiter) release(key limitKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a := l.agents[key]; a != nil && a.active > 0 {
		a.active--
	}
}

// flush records an agent's pending refusals in one record.
func (l *Limiter) flush(key limitKey) {
	l.mu.Lock()
	a := l.agents[key]
	if a == nil {
		l.mu.Unlock()
		return
	}
	n, f, reason := a.pending, a.flow, a.reason
	a.pending, a.flow, a.scheduled = 0, nil, false
	a.recorded = l.now()
	l.mu.Unlock()
	if n == 0 {
		return
	}
	in := Intent{Method: policies.MethodConnect, Transport: "tcp", Mode: ModeTCP,
		Refuse: fmt.Sprintf("%s: %d connection(s) refused since the last record", reason, n)}
	if f.OrigDst.IsValid() {
		in.Host, in.Port = f.OrigDst.Addr().String(), int(f.OrigDst.Port())
	}
	l.judge.decideAs(context.Background(), f, in, ClassLimit)
}

// forgetIdle drops agents that hold nothing and owe no record (l.mu held).
func (l *Limiter) forgetIdle() {
	for k, a := range l.agents {
		if a.active == 0 && a.pending == 0 && !a.scheduled {
			delete(l.agents, k)
		}
	}
}

// Active is how many flows the agent (or, without one, the cgroup) of f holds.
func (l *Limiter) Active(f *Flow) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a := l.agents[keyOf(f)]; a != nil {
		return a.active
	}
	return 0
}
