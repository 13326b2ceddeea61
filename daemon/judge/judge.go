// Package judge is the sidecar's one place of decision. Every front end — the transparent TCP/TLS
// path, plain HTTP, the explicit proxy, the HTTPS MITM engine and the DNS resolver — describes who
// is asking (a Flow: what the kernel attested) and what they ask for (an Intent), and gets a Verdict.
// Decide writes the decision's audit record before it returns, so nothing reaches an upstream unless
// a record of the decision is on disk first; Complete writes the record that closes an allowed flow.
//
// The sidecar's own refusals (an unknown agent, an unparsable ClientHello, a stale policy bundle, a
// refused upstream address, domain fronting…) are decisions too, with their reasons listed here.
// A refusal's record is rate-limited per agent and class, the rest counted by the audit log; nothing
// that lets a flow proceed is. The Limiter ([sidecar.limits]) caps what one agent can make the
// sidecar hold: concurrent flows and new flows a second.
//
// Every decision is also fed to the policy engine's session tracker (Observe), after its record is
// written and with the outcome recorded, so that the session attributes of later decisions
// (action_count, deny_count, …) count exactly what the audit log holds; the sidecar's own refusals
// count too. A decision that could not be recorded is not counted.
//
// The judge does no I/O but through the policy engine and the audit recorder it is given.
package judge

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// Mode is how a flow is carried, as the audit record's transport.mode names it.
type Mode string

const (
	ModeConnect Mode = "connect" // TLS tunnelled by SNI without termination
	ModeMITM    Mode = "mitm"    // TLS terminated, every request judged
	ModeHTTP    Mode = "http"    // plain HTTP, every request judged
	ModeTCP     Mode = "tcp"     // other TCP, judged by DNS-learned name or address
	ModeDNS     Mode = "dns"     // one DNS query, judged by name
	ModeKernel  Mode = "kernel"  // refused in the kernel before it reached the sidecar
)

// Reasons for the sidecar's own refusals. The policy layer gives every other reason.
const (
	ReasonUnknownAgent  = "unknown agent"
	ReasonAuditFailed   = "audit log unavailable"
	ReasonBadHello      = "unparsable TLS ClientHello"
	ReasonNoHost        = "no host to judge"
	ReasonFronting      = "host does not match the TLS server name"
	ReasonConnectInMITM = "CONNECT inside an intercepted connection"
	ReasonHandshake     = "mitm handshake failed"
	ReasonFallback      = "mitm fallback"
	// ReasonBodyBudget: a policy reads the request body, but the sidecar's buffer budget for bodies
	// ([sidecar.interceptor.https_mitm] body_buffer_bytes) is spent by requests in flight.
	ReasonBodyBudget = "request body buffer budget exhausted"
	// ReasonBodyLimit: the request body is longer than [sidecar.interceptor.https_mitm]
	// max_request_body_bytes.
	ReasonBodyLimit = "request body over max_request_body_bytes"
	// ReasonBodyRead: reading a body that a policy needs failed (the agent stopped sending, or
	// body_read_timeout passed).
	ReasonBodyRead = "reading the request body failed"
)

// ErrNoIdentity is a flow's Unknown for an explicit-proxy client outside every enforced cgroup when
// no identity is configured for such clients: its denial names the key that gives them one.
var ErrNoIdentity = errors.New("explicit proxy client outside every enforced cgroup (set [sidecar.interceptor] agent_id)")

// Error classes of a completion record's result.error: what ended an allowed flow early.
const (
	ErrorNetwork        = "connector_network_error"     // resolving, a refused address, dialing, upstream TLS, reset
	ErrorCredentials    = "credential injection failed" // nothing was sent upstream
	ErrorClientCanceled = "client_canceled"             // the agent went away first
	// ErrorHandshake: the agent's TLS handshake with firma's leaf failed (its own decision record
	// says how); nothing was sent upstream.
	ErrorHandshake = "mitm_handshake_failed"
	// ErrorBodyLimit: a streamed request body passed max_request_body_bytes and was cut off.
	ErrorBodyLimit = "request_body_over_limit"
)

// Flow is what the kernel attested about the connection a decision is made in: who is asking.
type Flow struct {
	AgentID    string
	SessionID  string
	Capability policies.Capability // the agent's Stage 1 check; nil when capabilities are not enforced
	// Unknown is why no agent covers the flow's cgroup; when set, every decision is a DENY.
	Unknown error
	// Monitor: the agent is in monitor mode. Its decisions are made and recorded as in enforce mode
	// (with enforced: false), but a policy denial does not stop the flow.
	Monitor bool

	Cgroup string // relative to the cgroup2 mount
	PID    uint32 // the process that connected (thread group id)
	UID    uint32
	Comm   string
	Exe    string
	// OrigDst is where the agent asked to go: recorded, never dialed. Invalid when the flow was not
	// redirected by the kernel (an explicit-proxy client outside every enforced cgroup).
	OrigDst netip.AddrPort
	Start   time.Time
}

// Intent is one thing to judge in a flow.
type Intent struct {
	Method    string // policies.MethodConnect, policies.MethodDNS, or an HTTP method
	Host      string // name or address, without port
	Port      int
	Path      string // HTTP path and query
	Transport string // policies raw_transport: http | https | tls | tcp | dns
	Mode      Mode
	SNI       string
	QType     string // DNS query type, recorded as the DNS record's resource.method
	Note      string // prefixed to the reason of a non-DENY decision (a fallback, say)
	// Refuse makes the sidecar refuse by itself, with this reason, without asking the policy.
	Refuse string
	// Content is what an HTTP request carries (MITM and plain HTTP intents; nil otherwise): its
	// header, its body size and, when NeedsBody asked for it, its buffered body.
	Content *policies.Content
}

// Verdict is a decision and the audit record that carries it.
type Verdict struct {
	policies.Decision
	// Monitored: the decision refused (DENY, DEFER, STEP_UP), but the agent is in monitor mode and
	// the flow proceeds. Front ends treat the flow as allowed, and inject no credentials into it.
	Monitored bool
	monitor   bool // the flow's agent is in monitor mode: nothing is modified either
	record    *audit.Event
}

// Allowed reports whether the flow may proceed: ALLOW, PASSTHROUGH and MODIFY (once modified), or a
// refusal in monitor mode.
func (v Verdict) Allowed() bool { return v.Outcome.Allowed() || v.Monitored }

// Redact is the headers to remove from an allowed request before it is forwarded (and before
// credentials are injected): a MODIFY decision's, lowercase. None in monitor mode, which modifies
// nothing.
func (v Verdict) Redact() []string {
	if v.Outcome != policies.Modify || v.Remediation == nil || v.monitor {
		return nil
	}
	return v.Remediation.RedactHeaders
}

// RecordID is the id of the decision's audit record ("" when none was written: a refusal whose
// record the rate limit suppressed).
func (v Verdict) RecordID() string {
	if v.record == nil {
		return ""
	}
	return v.record.ID
}

// Result is how an allowed flow or request ended.
type Result struct {
	BytesUp        int64 // agent → upstream
	BytesDown      int64 // upstream → agent
	Duration       time.Duration
	UpstreamStatus int            // HTTP status the upstream answered; 0 when none
	Dialed         netip.AddrPort // the upstream address used
	Injected       []string       // names (never values) of the credential headers the sidecar set
	// Path is how a tunnel's bytes were carried ("offload", "splice", "copy"); "" for HTTP requests.
	Path string
	// ErrClass is "" on success, else one of the Error* classes; Err is the detail behind it.
	ErrClass string
	Err      error
}

// Failed is the Result of a flow that ended with err before or while reaching its upstream.
func Failed(class string, err error, start time.Time) Result {
	return Result{ErrClass: class, Err: err, Duration: time.Since(start)}
}

// Decider is what front ends need of the judge.
type Decider interface {
	Decide(ctx context.Context, f *Flow, in Intent) Verdict
	Complete(v Verdict, r Result)
}

// RequestDecider is what the HTTP engine needs of the judge: Decider, and whether a request's body
// must be buffered before it can be decided.
type RequestDecider interface {
	Decider
	// NeedsBody reports whether a policy reads in's body (context.json, or context.body_size while
	// the length is unknown, or a git push): the caller then buffers up to MaxBodyBytes()+1 bytes
	// into in.Content before Decide. False for an intent Decide refuses whatever the body.
	NeedsBody(f *Flow, in Intent) bool
	// MaxBodyBytes is how much of a body is inspected ([sidecar.policy] max_body_bytes).
	MaxBodyBytes() int64
}

// Engine is the policy pipeline (mapping rules, Stage 1, Stage 2) and its session tracker;
// *policies.Engine implements it.
type Engine interface {
	Decide(ctx context.Context, r policies.Request) (policies.Decision, error)
	NeedsBody(r policies.Request) bool
	MaxBodyBytes() int64
	// Observe counts a recorded decision in its session.
	Observe(d policies.Decision)
}

// Recorder appends audit records; *audit.Writer implements it.
type Recorder interface {
	Append(ev *audit.Event) error
	// AppendLimited appends a refusal unless its agent has used up its budget of records of class;
	// written is false when it was counted instead, for a "suppressed" record to report.
	AppendLimited(class string, ev *audit.Event) (written bool, err error)
}

// Classes of refusal records, each an agent's own budget in the audit log's rate limit.
const (
	ClassKernel  = "kernel"        // refused in the kernel
	ClassDNS     = "dns"           // a DNS query refused, malformed or denied
	ClassUnknown = "unknown_agent" // a flow no agent covers
	ClassRefused = "refused"       // the sidecar's own refusals: unparsable hellos and requests, fronting…
	ClassPolicy  = "policy"        // denied by policy
	ClassLimit   = "limit"         // over the agent's flow limits (one record a second already)
)

// refusalClass is the class of a refusal's record.
func refusalClass(f *Flow, in Intent) string {
	switch {
	case in.Mode == ModeKernel:
		return ClassKernel
	case in.Mode == ModeDNS:
		return ClassDNS
	case f.Unknown != nil:
		return ClassUnknown
	case in.Refuse != "":
		return ClassRefused
	}
	return ClassPolicy
}

// Options configure a Judge.
type Options struct {
	Engine Engine
	Audit  Recorder
	// Stale reports why decisions must be refused while the authority's bundle is out of date, or
	// nil. nil Stale: never stale.
	Stale func() error
	Log   zerolog.Logger
}

// Judge decides and records. It is safe for concurrent use.
type Judge struct {
	engine Engine
	audit  Recorder
	stale  func() error
	log    zerolog.Logger
}

var _ RequestDecider = (*Judge)(nil)

// New builds a Judge.
func New(o Options) *Judge {
	stale := o.Stale
	if stale == nil {
		stale = func() error { return nil }
	}
	return &Judge{engine: o.Engine, audit: o.Audit, stale: stale, log: o.Log}
}

// Decide judges one intent and appends its audit record before returning, then counts the
// recorded decision in its session. An audit failure turns any decision into a DENY.
//
// A refusal is a record an agent can repeat at will, so that its records are rate-limited per agent
// and class (the audit log's refusal_rate and refusal_burst): over the budget, the record is
// counted instead of written, and a "suppressed" record says how many (the session counts it as
// well). Nothing that lets a flow proceed is ever limited — an ALLOW, a monitored denial — so every
// flow that reaches an upstream has its record.
func (j *Judge) Decide(ctx context.Context, f *Flow, in Intent) Verdict {
	return j.decideAs(ctx, f, in, "")
}

// decideAs is Decide with the class a refusal's record is limited as ("" = by what it is).
func (j *Judge) decideAs(ctx context.Context, f *Flow, in Intent, class string) Verdict {
	d, own := j.decide(ctx, f, in)
	if in.Note != "" && d.Outcome != policies.Deny {
		d.Reason = joinReason(in.Note, d.Reason)
	}
	ev := decisionRecord(f, in, d)
	ev.Decision.SidecarRefusal = own
	// Monitor mode lets policy refusals through; the sidecar's own refusals (a malformed hello,
	// fronting, an unknown agent…) are about what can be carried at all, and stay.
	monitored := f.Monitor && !d.Outcome.Allowed() && !own
	if f.Monitor {
		ev.Decision.Enforced = new(bool)
	}
	written, err := true, error(nil)
	if d.Outcome == policies.Deny && !monitored {
		if class == "" {
			class = refusalClass(f, in)
		}
		written, err = j.audit.AppendLimited(class, ev)
	} else {
		err = j.audit.Append(ev)
	}
	if err != nil {
		j.log.Error().Err(err).Msg("audit append failed: denying")
		d = policies.Decision{Outcome: policies.Deny, Reason: ReasonAuditFailed}
		ev.Decision = &audit.Decision{Outcome: string(d.Outcome), MatchedPolicies: []string{}, Reason: d.Reason}
		monitored = false
	} else {
		j.engine.Observe(d)
	}
	if !written {
		// Counted for the "suppressed" record; the log is spared the flood as well.
		ev = nil
		if e := j.log.Debug(); e != nil {
			e.Str(logfields.Agent, f.AgentID).Uint32(logfields.PID, f.PID).Str(logfields.Reason, d.Reason).Str("class", class).
				Msg("refusal record suppressed by the rate limit")
		}
	} else {
		j.logDecision(f, in, d, monitored)
	}
	return Verdict{Decision: d, Monitored: monitored, monitor: f.Monitor, record: ev}
}

// decide is the decision without its record: the sidecar's own refusals first (own is true), then
// the policy. Every decision names the flow's agent and session, so that the sidecar's refusals
// count in the session too.
func (j *Judge) decide(ctx context.Context, f *Flow, in Intent) (d policies.Decision, own bool) {
	deny := func(reason string) policies.Decision {
		return policies.Decision{Outcome: policies.Deny, Reason: reason, AgentID: f.AgentID, SessionID: f.SessionID,
			Host: in.Host}
	}
	if reason := j.refusal(f, in); reason != "" {
		return deny(reason), true
	}
	d, err := j.engine.Decide(ctx, request(f, in))
	if err != nil {
		return deny(err.Error()), false
	}
	return d, false
}

// refusal is why the sidecar refuses an intent by itself, before the policy: "" when it does not.
func (j *Judge) refusal(f *Flow, in Intent) string {
	switch {
	case in.Mode == ModeKernel && in.Refuse != "":
		return in.Refuse // what the kernel refused, whether or not an agent still covers the cgroup
	case errors.Is(f.Unknown, ErrNoIdentity):
		return ReasonUnknownAgent + ": " + ErrNoIdentity.Error()
	case f.Unknown != nil:
		return ReasonUnknownAgent
	case in.Refuse != "":
		return in.Refuse
	case in.Host == "":
		return ReasonNoHost
	}
	if err := j.stale(); err != nil {
		return err.Error()
	}
	return ""
}

// NeedsBody reports whether the policy reads in's body, so that the HTTP engine buffers it before
// Decide. An intent the sidecar refuses by itself needs none.
func (j *Judge) NeedsBody(f *Flow, in Intent) bool {
	if in.Content == nil || j.refusal(f, in) != "" {
		return false
	}
	return j.engine.NeedsBody(request(f, in))
}

// MaxBodyBytes is how much of a request body the policy inspects.
func (j *Judge) MaxBodyBytes() int64 { return j.engine.MaxBodyBytes() }

// request is the policy request of an intent in a flow.
func request(f *Flow, in Intent) policies.Request {
	r := policies.Request{
		AgentID:    f.AgentID,
		SessionID:  f.SessionID,
		Method:     in.Method,
		Host:       in.Host,
		Port:       in.Port,
		Path:       in.Path,
		Transport:  in.Transport,
		Time:       time.Now(),
		PID:        int(f.PID),
		UID:        int(f.UID),
		Exe:        f.Exe,
		Cgroup:     f.Cgroup,
		Capability: f.Capability,
	}
	if in.Content != nil {
		r.Content = *in.Content
	}
	return r
}

func joinReason(a, b string) string {
	if b == "" {
		return a
	}
	return a + ": " + b
}

// decisionRecord builds the canonical decision record.
func decisionRecord(f *Flow, in Intent, d policies.Decision) *audit.Event {
	resource := audit.Resource{Host: in.Host, Port: in.Port}
	switch {
	case in.Method == policies.MethodConnect && in.Port != 0:
		// A connection-level intent, on any transport: name:port, as the guides read it.
		resource.Host = HostPort(in.Host, in.Port)
	case in.Mode == ModeMITM || in.Mode == ModeHTTP:
		resource.Method = in.Method
		resource.Path = in.Path
		if d.Path != "" {
			resource.Path = d.Path
		}
		if d.Provider != "" {
			p := d.Provider
			resource.Provider = &p
		}
	case in.Mode == ModeDNS:
		// A lookup is of a name, not a connection to its port 53: the record carries the name and
		// the query type as the method.
		resource.Method = in.QType
	case in.Port != 0:
		resource.Host = HostPort(in.Host, in.Port)
	}
	var action *string
	if d.ActionClass != "" {
		a := d.ActionClass
		action = &a
	}
	matched := d.MatchedPolicies
	if matched == nil {
		matched = []string{}
	}
	if in.Mode == ModeMITM || in.Mode == ModeHTTP {
		_, query, _ := strings.Cut(in.Path, "?")
		resource.Query = policies.RedactQuery(query)
	}
	ev := &audit.Event{
		Kind: audit.KindDecision,
		Envelope: &audit.Envelope{
			Agent: audit.Agent{
				AgentID:   f.AgentID,
				SessionID: f.SessionID,
				Cgroup:    f.Cgroup,
				PID:       int(f.PID),
				Exe:       f.Exe,
				Comm:      f.Comm,
				UID:       int(f.UID),
			},
			Intent: audit.Intent{ActionClass: action, Resource: resource, RawTransport: in.Transport,
				Content: contentRecord(in.Content), Git: gitRecord(d.Git)},
			Transport: audit.Transport{Mode: string(in.Mode), SNI: in.SNI},
		},
		Decision: &audit.Decision{Outcome: string(d.Outcome), MatchedPolicies: matched, Reason: d.Reason,
			Fields: d.Fields, Remediation: remediationRecord(d.Remediation)},
	}
	if f.OrigDst.IsValid() {
		ev.Envelope.Transport.OrigDst = f.OrigDst.String()
	}
	if d.TokenID != "" {
		ev.Capability = &audit.Capability{TokenID: d.TokenID}
	}
	return ev
}

// contentRecord summarizes what a request carried: never a header value, never the body.
func contentRecord(c *policies.Content) *audit.Content {
	if c == nil {
		return nil
	}
	return &audit.Content{ContentType: policies.MediaType(c.Header), BodySize: c.BodySize, BodyBuffered: c.Body != nil,
		BodyTruncated: c.BodyTruncated}
}

func gitRecord(g *policies.GitRequest) *audit.Git {
	if g == nil {
		return nil
	}
	out := &audit.Git{Service: g.Service, Owner: g.Owner, Repo: g.Repo, PackProblem: g.PackProblem}
	updates := g.Updates
	if len(updates) > audit.MaxGitUpdates {
		out.UpdatesTotal = len(updates)
		updates = updates[:audit.MaxGitUpdates]
	}
	for _, u := range updates {
		out.Updates = append(out.Updates, audit.RefUpdate{Ref: u.Ref, Old: u.Old, New: u.New, Create: u.Create,
			Delete: u.Delete, Force: u.Force(), Protected: u.Protected})
	}
	return out
}

func remediationRecord(r *policies.Remediation) *audit.Remediation {
	if r == nil {
		return nil
	}
	out := &audit.Remediation{Kind: string(r.Kind), RedactHeaders: r.RedactHeaders, Challenge: r.Challenge}
	if r.Kind == policies.RemedyDefer {
		out.RetryAfterMS = r.RetryAfter.Milliseconds()
	}
	return out
}

// Complete appends the record that closes an allowed decision: what was dialed, bytes each way,
// duration, upstream status, error. It repeats the decision's envelope, so that every record names
// the process behind it. An allowed flow that failed is recorded as an ABORT. A failure to append is
// logged: the flow already happened.
func (j *Judge) Complete(v Verdict, r Result) {
	if v.record == nil {
		return
	}
	res := audit.Result{
		BytesUp:        r.BytesUp,
		BytesDown:      r.BytesDown,
		DurationMS:     r.Duration.Milliseconds(),
		UpstreamStatus: r.UpstreamStatus,
		Injected:       r.Injected,
		Path:           r.Path,
		Error:          errorText(r),
	}
	ev := &audit.Event{Kind: audit.KindCompletion, DecisionID: v.record.ID, Result: &res}
	if v.record.Envelope != nil {
		env := *v.record.Envelope
		if r.Dialed.IsValid() {
			env.Transport.Dialed = r.Dialed.String()
		}
		ev.Envelope = &env
	}
	if res.Error != "" && v.Allowed() {
		ev.Decision = &audit.Decision{Outcome: string(policies.Abort), MatchedPolicies: []string{}, Reason: res.Error}
	}
	if err := j.audit.Append(ev); err != nil {
		j.log.Error().Err(err).Str(logfields.EventID, v.record.ID).Msg("audit completion append failed")
	}
}

// errorText is result.error: the class, and the detail behind it. A credential failure's detail is
// never recorded: it could name a secret file or variable the operator considers sensitive.
func errorText(r Result) string {
	if r.ErrClass == "" {
		return ""
	}
	if r.Err == nil || r.ErrClass == ErrorCredentials {
		return r.ErrClass
	}
	return r.ErrClass + ": " + r.Err.Error()
}

func (j *Judge) logDecision(f *Flow, in Intent, d policies.Decision, monitored bool) {
	lvl := zerolog.InfoLevel
	if d.Outcome == policies.Allow {
		lvl = zerolog.DebugLevel
	}
	e := j.log.WithLevel(lvl)
	if e == nil {
		return
	}
	if f.Monitor {
		e = e.Bool("enforced", false)
	}
	if monitored {
		e = e.Bool("monitored", true)
	}
	e = e.Str(logfields.Outcome, string(d.Outcome)).
		Str(logfields.Agent, f.AgentID).
		Uint32(logfields.PID, f.PID).
		Str(logfields.Mode, string(in.Mode)).
		Str(logfields.Host, in.Host).
		Str(logfields.Reason, d.Reason)
	if in.Port != 0 {
		e = e.Int(logfields.Port, in.Port)
	}
	if in.Path != "" {
		e = e.Str(logfields.Method, in.Method).Str(logfields.Path, in.Path)
	}
	if len(d.MatchedPolicies) > 0 {
		e = e.Strs(logfields.Policies, d.MatchedPolicies)
	}
	e.Msg("decision")
}

// HostPort joins a host and a port, bracketing IPv6 literals.
func HostPort(host string, port int) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}
