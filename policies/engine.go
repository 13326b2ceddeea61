package policies

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cedar-policy/cedar-go/types"
	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
)

// Decision reasons. They are shown in the audit log and in 403 bodies, so they stay short and
// stable; a Stage 1 failure's reason is ReasonCapability + ": " + the capability error, a malformed
// request's "malformed request: " + what is wrong.
const (
	ReasonUnclassified = "unclassified intent"
	ReasonPermitted    = "permitted by policy"
	ReasonForbidden    = "forbidden by policy"
	ReasonNoPermit     = "no policy permits"
	ReasonEvalError    = "forbid policy failed to evaluate"
	ReasonCapability   = "capability"
	ReasonCanceled     = "decision canceled"
	ReasonModified     = "modified by policy" // MODIFY: + ": redact_header <names>"
	ReasonDeferred     = "deferred by policy" // DEFER: + ": retry after <ms> ms"
	ReasonStepUp       = "step-up required"   // STEP_UP: + ": <challenge>"
	ReasonBodyTooLarge = "request body over max_body_bytes"
)

// Engine is the sidecar's one decision point: normalize → mapping rules → Stage 1 capability →
// Stage 2 Cedar. Safe for concurrent use. Reload, LoadBundle and Watch swap the active policy set,
// schema and rules atomically: a decision runs entirely on the set that was active when it started,
// and a failed load keeps the last good set.
type Engine struct {
	cfg      Config
	mapping  MappingConfig
	lim      *limits
	sessions *Sessions
	log      zerolog.Logger
	now      func() time.Time

	active atomic.Pointer[state]

	mu     sync.Mutex // serializes loads
	bundle *bundle    // the authority's policy files, once LoadBundle succeeded
}

type bundle struct {
	files  map[string][]byte
	schema []byte // nil: the local schema
}

// state is one immutable, consistent generation of what decisions use.
type state struct {
	set              *Set
	rules            *Rules
	defaultProtected bool
	version          string
}

// New loads the schema, policy set and mapping rules that cfg and mapping name (empty ⇒ the embedded
// defaults) and returns an engine deciding with them. A problem in any file is an error naming the
// file and the line.
func New(cfg Config, mapping MappingConfig, log zerolog.Logger) (*Engine, error) {
	lim, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, mapping: mapping, lim: lim, sessions: NewSessions(cfg.MaxSessions), log: log, now: time.Now}
	st, err := e.load(nil)
	if err != nil {
		return nil, err
	}
	e.active.Store(st)
	e.log.Info().Str(logfields.Version, st.version).Int(logfields.Count, st.set.Len()).
		Str(logfields.PolicySource, e.source()).Str(logfields.Rules, st.rules.Name()).Msg("policy set loaded")
	return e, nil
}

// CheckConfig loads everything cfg and mapping name, exactly as New does, without building an
// engine: `firma check config` uses it. A problem in a file is a *LoadError naming file and line.
func CheckConfig(cfg Config, mapping MappingConfig) error {
	if _, err := cfg.parse(); err != nil {
		return err
	}
	e := &Engine{cfg: cfg, mapping: mapping}
	_, err := e.load(nil)
	return err
}

// MaxBodyBytes is how much of a request body the HTTP engine buffers when NeedsBody says so
// ([sidecar.policy] max_body_bytes): it reads up to MaxBodyBytes+1 bytes and, past MaxBodyBytes,
// passes the first MaxBodyBytes with Content.BodyTruncated set.
func (e *Engine) MaxBodyBytes() int64 { return e.lim.maxBody }

// NeedsBody reports whether Decide needs r's body buffered (Content.Body) before it can judge r: a
// candidate policy reads context.json, or context.body_size while the length is unknown
// (Content.BodySize < 0), or r is a git push on a git host. Otherwise the body may stream. It costs
// a classification, about half a decision; a request that cannot be normalized needs no body
// (Decide denies it).
func (e *Engine) NeedsBody(r Request) bool {
	if r.Content.BodySize == 0 && r.Content.Body == nil {
		return false
	}
	st := e.active.Load()
	n, err := normalize(&r)
	if err != nil || n.kind != intentHTTP {
		return false
	}
	rule, git := st.classify(&n, e.lim)
	var class string
	switch {
	case git != nil && git.Push:
		return true
	case git != nil:
		class = git.ActionClass()
	case rule != nil:
		class = rule.ActionClass
	default:
		return false
	}
	c := st.set.candidates(n.agent, class)
	mask, _ := c.needs()
	return mask.has(attrJSON) || mask.has(attrBodySize) && r.Content.BodySize < 0
}

// Observe records a decision in the session tracker, for the session attributes of later
// decisions. Call it once per decision, after its audit record is written, with the recorded
// outcome.
func (e *Engine) Observe(d Decision) { e.sessions.Observe(d) }

// Sessions is the engine's session tracker.
func (e *Engine) Sessions() *Sessions { return e.sessions }

// Version is a content hash of the active schema, policy set, mapping rules and default_protected.
func (e *Engine) Version() string { return e.active.Load().version }

// Set returns the active policy set.
func (e *Engine) Set() *Set { return e.active.Load().set }

// Rules returns the active mapping rules.
func (e *Engine) Rules() *Rules { return e.active.Load().rules }

// Reload re-reads the schema, the policy dir (or keeps the authority bundle, once one was loaded)
// and the mapping rules. On error the active set stays, the error is logged and returned.
func (e *Engine) Reload() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, err := e.load(e.bundle)
	if err != nil {
		e.log.Error().Err(err).Str(logfields.Version, e.Version()).Msg("policy reload failed; keeping the last good set")
		return err
	}
	e.swap(st, "policy set reloaded")
	return nil
}

// LoadBundle validates the policy files of a signed authority bundle (keyed by file name) against
// schema (nil or empty: the local schema) and swaps them in atomically; the mapping rules stay the
// local ones and are revalidated against the bundle's schema. Later Reloads keep the bundle's
// policies and re-read only the local files. On error the active set stays.
func (e *Engine) LoadBundle(files map[string][]byte, schema []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := &bundle{files: make(map[string][]byte, len(files))}
	for name, data := range files {
		b.files[name] = append([]byte(nil), data...)
	}
	if len(schema) > 0 {
		b.schema = append([]byte(nil), schema...)
	}
	st, err := e.loadBundle(b, e.active.Load().rules)
	if err != nil {
		e.log.Error().Err(err).Str(logfields.Version, e.Version()).Msg("policy bundle rejected; keeping the last good set")
		return err
	}
	e.bundle = b
	e.swap(st, "policy bundle loaded")
	return nil
}

func (e *Engine) swap(st *state, msg string) {
	old := e.active.Swap(st)
	ev := e.log.Info()
	if old.version == st.version {
		ev = e.log.Debug()
	}
	ev.Str(logfields.Version, st.version).Int(logfields.Count, st.set.Len()).Msg(msg)
}

func (e *Engine) source() string {
	switch {
	case e.bundle != nil:
		return "authority bundle"
	case e.cfg.Dir == "":
		return "embedded"
	}
	return e.cfg.Dir
}

// load builds a state from the configured files, or from b's policies when b is set.
func (e *Engine) load(b *bundle) (*state, error) {
	schema, err := e.localSchema()
	if err != nil {
		return nil, err
	}
	rules, err := e.localRules(schema)
	if err != nil {
		return nil, err
	}
	if b != nil {
		return e.loadBundle(b, rules)
	}
	var set *Set
	switch {
	case e.cfg.Dir != "":
		set, err = LoadDir(e.cfg.Dir, schema)
	case schema == EmbeddedSchema():
		set = EmbeddedSet()
	default:
		set, err = ParseFiles(EmbeddedPolicyFiles(), schema)
		if err != nil {
			err = fmt.Errorf("embedded policy set under schema %s: %w", schema.Name(), err)
		}
	}
	if err != nil {
		return nil, err
	}
	return e.newState(set, rules), nil
}

func (e *Engine) loadBundle(b *bundle, rules *Rules) (*state, error) {
	schema, err := e.localSchema()
	if err != nil {
		return nil, err
	}
	if b.schema != nil {
		if schema, err = ParseSchema("bundle.cedarschema", b.schema); err != nil {
			return nil, fmt.Errorf("policy bundle: %w", err)
		}
	}
	set, err := ParseFiles(b.files, schema)
	if err != nil {
		return nil, fmt.Errorf("policy bundle: %w", err)
	}
	if rules, err = rules.revalidate(schema); err != nil {
		return nil, fmt.Errorf("mapping rules under the bundle's schema: %w", err)
	}
	return e.newState(set, rules), nil
}

func (e *Engine) localSchema() (*Schema, error) {
	if e.cfg.Schema == "" {
		return EmbeddedSchema(), nil
	}
	return LoadSchema(e.cfg.Schema)
}

func (e *Engine) localRules(schema *Schema) (*Rules, error) {
	switch {
	case e.mapping.RulesPath != "":
		return LoadRules(e.mapping.RulesPath, schema)
	case schema == EmbeddedSchema():
		return EmbeddedRules(), nil
	}
	return ParseRules(embeddedRulesName, embeddedRulesText, schema)
}

func (e *Engine) newState(set *Set, rules *Rules) *state {
	h := sha256.New()
	fmt.Fprintf(h, "set %s\nrules %s\ndefault_protected %t\n", set.Version(), rules.Version(), e.mapping.DefaultProtected)
	return &state{set: set, rules: rules, defaultProtected: e.mapping.DefaultProtected, version: hex.EncodeToString(h.Sum(nil))}
}

// Decide judges one intent. It never fails open: every path that is not an explicit ALLOW,
// PASSTHROUGH or MODIFY returns a refusal, also alongside an error. The error is non-nil only when
// ctx is done.
//
// Unclassified intents are denied with ReasonUnclassified (default_protected) or passed through,
// without Stage 1 or Cedar. With r.Capability set, Stage 1 runs on the classified intent; its error
// denies with reason "capability: <error>" (MatchedPolicies then lists the forbids that match too,
// if any). Otherwise Cedar decides: default deny, forbid beats permit. MatchedPolicies are the
// forbids for a forbid-deny, the permits for an allow, and empty for a default deny. When every
// forbid that matches carries a remediation and a permit allows the request, the remediation
// decides (MODIFY, DEFER or STEP_UP; HTTP requests only, a connection-level intent is denied).
// A request whose content a candidate policy reads but that cannot be had — a body not buffered,
// over max_body_bytes, malformed JSON, a malformed query — is denied with why.
func (e *Engine) Decide(ctx context.Context, r Request) (Decision, error) {
	return e.decide(ctx, &r, "", e.sessions)
}

// decide is Decide with an optional fixed action class, which skips the mapping rules (fixtures),
// and the session tracker to read.
func (e *Engine) decide(ctx context.Context, r *Request, actionClass string, sessions *Sessions) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{Outcome: Deny, Reason: ReasonCanceled}, err
	}
	st := e.active.Load()
	now := r.Time
	if now.IsZero() {
		now = e.now()
	}
	n, err := normalize(r)
	if err != nil {
		return Decision{Outcome: Deny, Reason: err.Error(), Host: r.Host, AgentID: r.AgentID, SessionID: r.SessionID, at: now}, nil
	}
	d := Decision{Host: n.host, Path: n.path, AgentID: n.agent, SessionID: n.session, at: now}
	f := &facts{n: &n, r: r, now: now, lim: e.lim, schema: st.set.schema, sessions: sessions}
	rule, git := st.classify(&n, e.lim)
	if rule != nil && actionClass == "" {
		d.Provider = rule.Provider // a fixed action (fixtures) skips the rules, and their provider
	}
	switch {
	case r.git != nil:
		f.git = *r.git // a fixture's git attributes, instead of the request's
	case git != nil:
		d.Git = git
		if err := e.parsePush(f, git); err != nil {
			d.Outcome, d.Reason = Deny, err.Error()
			d.ActionClass = actionClass
			if d.ActionClass == "" {
				d.ActionClass = ClassCodeWrite
			}
			return d, nil
		}
		f.git = git.facts()
	}
	switch {
	case actionClass != "":
	case git != nil:
		actionClass = git.ActionClass()
	case rule != nil:
		actionClass = rule.ActionClass
	default:
		d.Reason = ReasonUnclassified
		d.Outcome = Passthrough
		if st.defaultProtected {
			d.Outcome = Deny
		}
		return d, nil
	}
	d.ActionClass = actionClass
	var capErr error
	if r.Capability != nil {
		d.TokenID, capErr = r.Capability.Authorize(n.agent, actionClass, n.resource, now)
	}
	v, ctxErr := e.evaluate(st, f, actionClass, d.Provider)
	if capErr != nil {
		// Stage 1 decides, but the forbids that also match are recorded, so that an audit query
		// for a forbid finds every request it covers.
		d.Outcome, d.Reason, d.TokenID = Deny, ReasonCapability+": "+capErr.Error(), ""
		if ctxErr == nil && !v.allowed {
			d.MatchedPolicies, d.Fields = v.policies, mergeFields(v.matched)
		}
		return d, nil
	}
	if ctxErr != nil {
		d.Outcome, d.Reason = Deny, ctxErr.Error()
		return d, nil
	}
	matched := v.matched
	switch {
	case v.errored:
		d.Outcome, d.Reason = Deny, ReasonEvalError
	case v.allowed:
		d.Outcome, d.Reason = Allow, ReasonPermitted
	case v.remediable() && len(v.permits) == 0:
		// A remediation changes how a request that would be allowed goes through; one that no
		// policy permits is simply denied.
		d.Outcome, d.Reason, matched = Deny, ReasonNoPermit, nil
	case v.remediable() && n.kind != intentHTTP:
		rem := combine(v.matched)
		d.Outcome, d.Reason = Deny, fmt.Sprintf("%s (@%s applies to HTTP requests only)", ReasonForbidden, rem.Kind)
	case v.remediable():
		rem := combine(v.matched)
		d.Outcome, d.Reason, d.Remediation = rem.outcome(), rem.reason(), rem
		if rem.Kind == RemedyModify {
			matched = append(slices.Clone(v.matched), v.permits...)
		}
	case len(v.matched) > 0:
		d.Outcome, d.Reason = Deny, ReasonForbidden
	default:
		d.Outcome, d.Reason = Deny, ReasonNoPermit
	}
	d.MatchedPolicies = make([]string, 0, len(matched))
	for _, p := range matched {
		d.MatchedPolicies = append(d.MatchedPolicies, p.id)
	}
	slices.Sort(d.MatchedPolicies)
	d.Fields = mergeFields(matched)
	return d, nil
}

// classify finds the mapping rule of an intent and, for an HTTP request on a git host, what it
// does in git's smart-HTTP protocol.
func (st *state) classify(n *normalized, lim *limits) (*Rule, *GitRequest) {
	rule := st.rules.match(n)
	if n.kind != intentHTTP || !lim.git.isGitHost(n.host) {
		return rule, nil
	}
	if g, ok := ClassifyGit(n.method, n.path, n.query); ok {
		return rule, &g
	}
	return rule, nil
}

// parsePush reads a git push's ref updates and pack into g.
func (e *Engine) parsePush(f *facts, g *GitRequest) error {
	if !g.Push {
		return nil
	}
	body, cut, err := f.body()
	if err != nil {
		return err
	}
	updates, problem, err := ParsePush(body, cut, 8*e.lim.maxBody, e.lim.git.isProtected)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			return err
		}
		return fmt.Errorf("%w: %v", errBodyMalformed, err)
	}
	g.Updates, g.PackProblem = updates, problem
	return nil
}

// evaluate is Stage 2: Cedar on the candidate policies of the agent and the action class, with a
// context of the attributes they read.
func (e *Engine) evaluate(st *state, f *facts, actionClass, provider string) (verdict, error) {
	n := f.n
	c := st.set.candidates(n.agent, actionClass)
	mask, needResource := c.needs()
	ents := &requestEntities{actions: st.set.schema.actions}
	if needResource {
		ents.resource = resourceEntity(n, provider)
	} else {
		ents.resource.UID = types.NewEntityUID(ResourceType, types.String(n.resource))
	}
	req := types.Request{
		Principal: types.NewEntityUID(AgentType, types.String(n.agent)),
		Action:    types.NewEntityUID(ActionType, types.String(actionClass)),
		Resource:  ents.resource.UID,
	}
	if mask != 0 {
		rec, extra, err := f.context(mask)
		if err != nil {
			return verdict{}, err
		}
		req.Context, ents.extra = rec, extra
	}
	v := st.set.authorizeCandidates(&c, ents, req)
	if v.remediable() {
		v.permits = st.set.permits(&c, ents, req)
	}
	if len(v.errs) > 0 {
		e.log.Warn().Strs(logfields.Errors, v.errs).Str(logfields.Agent, n.agent).Str(logfields.Action, actionClass).
			Str(logfields.Host, n.host).Msg("policy evaluation errors")
	}
	return v, nil
}
