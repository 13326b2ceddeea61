package policies

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Change is how a replayed decision differs from the one it is compared with.
type Change string

const (
	// NewlyDenied: let through before (ALLOW, PASSTHROUGH, MODIFY), refused now.
	NewlyDenied Change = "newly denied"
	// NewlyAllowed: refused before (DENY, DEFER, STEP_UP), let through now.
	NewlyAllowed Change = "newly allowed"
	// OutcomeChanged: let through or refused both times, but differently (ALLOW → MODIFY,
	// DENY → STEP_UP).
	OutcomeChanged Change = "outcome changed"
)

// changeOrder is the order of Changes in a report.
var changeOrder = map[Change]int{NewlyDenied: 0, NewlyAllowed: 1, OutcomeChanged: 2}

// ReplayOptions shape a Replayer.
type ReplayOptions struct {
	// Baseline, when set, judges every record too, and the candidate is compared with its decision
	// instead of the recorded one: a policy edit checked against the policy in force, whatever
	// policies were in force while the log was written.
	Baseline *Engine
}

// Replayer judges recorded intents again under a candidate policy, as the sidecar would have judged
// them with Stage 1 (capabilities) off, and collects what would change. Records are given in chain
// order: the candidate's session state (action_count, deny_count, the windows…) is rebuilt from
// the replayed decisions, session by session, as the sidecar builds it.
//
// A record whose decision would consult a policy that reads request content the record does not
// carry (the body, the headers, a query it lacks) is not judged: it is reported as not replayed,
// with why. So is a git push, whose class depends on the pushed refs.
type Replayer struct {
	e, base *Engine
	rep     ReplayReport
	groups  map[replayKey]*replayGroup
	skips   map[string]*ReplaySkip
}

type replayKey struct {
	change      Change
	host, class string
}

type replayGroup struct {
	ReplayGroup
	agents map[string]bool
}

// ReplayReport is what a replay found. Its JSON form is `firma policy replay --json`.
type ReplayReport struct {
	// Against is what the candidate was compared with: "recorded outcomes" or "baseline policy".
	Against string `json:"against"`
	// Decisions counts the decision records given; Replayed those judged again, Unchanged those
	// whose outcome stays.
	Decisions int `json:"decisions"`
	Replayed  int `json:"replayed"`
	Unchanged int `json:"unchanged"`
	// Changes are the decisions that would change, by change, host and action class (the
	// candidate's), sorted.
	Changes []ReplayGroup `json:"changes"`
	// NotReplayed are the decision records that could not be judged again, by reason.
	NotReplayed []ReplaySkip `json:"not_replayed"`
}

// Changed is the number of decisions that would change.
func (r *ReplayReport) Changed() int {
	n := 0
	for _, g := range r.Changes {
		n += g.Count
	}
	return n
}

// ReplayGroup is the decisions of one change to one host in one action class.
type ReplayGroup struct {
	Change      Change        `json:"change"`
	Host        string        `json:"host"`
	ActionClass string        `json:"action_class"` // "" when the candidate's rules classify none
	Count       int           `json:"count"`
	Agents      []string      `json:"agents"`
	Example     ReplayExample `json:"example"` // the first in chain order
}

// ReplayExample is one decision of a group: the record, and both decisions.
type ReplayExample struct {
	Where       string   `json:"where"`
	Seq         uint64   `json:"seq"`
	Agent       string   `json:"agent"`
	Request     string   `json:"request"` // "GET https://api.example.com/v1/items"
	Was         Outcome  `json:"was"`
	WasReason   string   `json:"was_reason"`
	Now         Outcome  `json:"now"`
	NowReason   string   `json:"now_reason"`
	NowPolicies []string `json:"now_policies"`
}

// ReplaySkip is the records not replayed for one reason.
type ReplaySkip struct {
	Reason  string `json:"reason"`
	Count   int    `json:"count"`
	Example string `json:"example"` // where the first one is
}

// NewReplayer returns a Replayer judging with candidate. Give it engines of their own: replaying
// feeds their session trackers.
func NewReplayer(candidate *Engine, opt ReplayOptions) *Replayer {
	r := &Replayer{e: candidate, base: opt.Baseline, groups: map[replayKey]*replayGroup{}, skips: map[string]*ReplaySkip{}}
	r.rep.Against = "recorded outcomes"
	if r.base != nil {
		r.rep.Against = "baseline policy"
	}
	return r
}

// Skip counts a decision record that cannot be replayed at all (the sidecar's own refusals, kernel
// refusals), with why.
func (r *Replayer) Skip(where, reason string) {
	r.rep.Decisions++
	s := r.skips[reason]
	if s == nil {
		s = &ReplaySkip{Reason: reason, Example: where}
		r.skips[reason] = s
	}
	s.Count++
}

// Add judges one recorded intent again. The error is non-nil only when ctx is done.
func (r *Replayer) Add(ctx context.Context, o Observed) error {
	if why := r.e.unreplayable(&o); why != "" {
		r.Skip(o.Where, why)
		return nil
	}
	if r.base != nil {
		if why := r.base.unreplayable(&o); why != "" {
			r.Skip(o.Where, "baseline: "+why)
			return nil
		}
	}
	now, err := r.judge(ctx, r.e, o)
	if err != nil {
		return err
	}
	was := Decision{Outcome: o.Outcome, Reason: o.Reason}
	if r.base != nil {
		if was, err = r.judge(ctx, r.base, o); err != nil {
			return err
		}
	}
	r.rep.Decisions++
	r.rep.Replayed++
	change, changed := compare(was.Outcome, now.Outcome)
	if !changed {
		r.rep.Unchanged++
		return nil
	}
	host := now.Host
	if host == "" {
		host = o.Request.Host
	}
	k := replayKey{change: change, host: host, class: now.ActionClass}
	g := r.groups[k]
	if g == nil {
		policies := now.MatchedPolicies
		if policies == nil {
			policies = []string{}
		}
		g = &replayGroup{ReplayGroup: ReplayGroup{Change: change, Host: host, ActionClass: now.ActionClass,
			Example: ReplayExample{Where: o.Where, Seq: o.Seq, Agent: o.Request.AgentID, Request: o.Describe(),
				Was: was.Outcome, WasReason: was.Reason, Now: now.Outcome, NowReason: now.Reason, NowPolicies: policies}},
			agents: map[string]bool{}}
		r.groups[k] = g
	}
	g.Count++
	g.agents[o.Request.AgentID] = true
	return nil
}

// judge decides o's intent with e and feeds e's session tracker, as the sidecar does.
func (r *Replayer) judge(ctx context.Context, e *Engine, o Observed) (Decision, error) {
	req := o.Request
	req.Capability, req.Session = nil, nil
	d, err := e.Decide(ctx, req)
	if err != nil {
		return d, err
	}
	e.Observe(d)
	return d, nil
}

// compare says how an outcome changed, if it did.
func compare(was, now Outcome) (Change, bool) {
	switch {
	case was == now:
		return "", false
	case was.Allowed() && !now.Allowed():
		return NewlyDenied, true
	case !was.Allowed() && now.Allowed():
		return NewlyAllowed, true
	}
	return OutcomeChanged, true
}

// Report returns what the replay found so far, sorted.
func (r *Replayer) Report() *ReplayReport {
	rep := r.rep
	rep.Changes = []ReplayGroup{}
	for _, g := range r.groups {
		out := g.ReplayGroup
		out.Agents = make([]string, 0, len(g.agents))
		for a := range g.agents {
			out.Agents = append(out.Agents, a)
		}
		sort.Strings(out.Agents)
		rep.Changes = append(rep.Changes, out)
	}
	sort.Slice(rep.Changes, func(i, j int) bool {
		a, b := rep.Changes[i], rep.Changes[j]
		if a.Change != b.Change {
			return changeOrder[a.Change] < changeOrder[b.Change]
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.ActionClass < b.ActionClass
	})
	rep.NotReplayed = []ReplaySkip{}
	for _, s := range r.skips {
		rep.NotReplayed = append(rep.NotReplayed, *s)
	}
	sort.Slice(rep.NotReplayed, func(i, j int) bool {
		a, b := rep.NotReplayed[i], rep.NotReplayed[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.Reason < b.Reason
	})
	return &rep
}

// unreplayable says why e cannot judge o as the sidecar judged it: a policy the decision would
// consult reads request content the record does not carry, or the intent is a git push (classified
// by the refs in its body). "" when it can.
func (e *Engine) unreplayable(o *Observed) string {
	st := e.active.Load()
	r := o.Request
	n, err := normalize(&r)
	if err != nil {
		return "" // malformed: denied without reading anything, as it was
	}
	rule, git := st.classify(&n, e.lim)
	var class string
	switch {
	case git != nil && git.Push:
		return "a git push: its class and policies depend on the pushed refs, in the body the record does not carry"
	case git != nil && !o.Carried.Query && strings.HasSuffix(n.path, "/info/refs"):
		return "git ref discovery: its class depends on the query, which the record does not carry"
	case git != nil:
		class = git.ActionClass()
	case rule != nil:
		class = rule.ActionClass
	default:
		return "" // unclassified: decided by default_protected alone
	}
	c := st.set.candidates(n.agent, class)
	mask, _ := c.needs()
	var lacks []string
	noBody := o.Carried.BodySize && r.Content.BodySize == 0
	if mask.has(attrJSON) && !noBody {
		lacks = append(lacks, "context.json (the body)")
	}
	if mask.has(attrHeaders) {
		lacks = append(lacks, "context.headers")
	}
	if mask.has(attrBodySize) && !o.Carried.BodySize {
		lacks = append(lacks, "context.body_size")
	}
	if mask.has(attrContentType) && !o.Carried.ContentType {
		lacks = append(lacks, "context.content_type")
	}
	if mask&queryAttrs != 0 && !o.Carried.Query {
		lacks = append(lacks, "context.query")
	}
	if len(lacks) == 0 || n.kind != intentHTTP {
		return ""
	}
	return fmt.Sprintf("policies on %s read %s, which the record does not carry", class, strings.Join(slices.Compact(lacks), ", "))
}
