package policies

import (
	"net/http"
	"time"
)

// Outcome is the verdict of one decision. The strings are the audit log's decision.outcome values.
type Outcome string

const (
	Allow       Outcome = "ALLOW"
	Deny        Outcome = "DENY"
	Passthrough Outcome = "PASSTHROUGH" // unclassified intent with default_protected = false
	Abort       Outcome = "ABORT"       // allowed, then failed while carrying it out (set by the daemon)
	// Modify: allowed once modified as Decision.Remediation says (an @modify forbid matched and a
	// permit allows the rest). Only for HTTP requests.
	Modify Outcome = "MODIFY"
	// Defer: refused for now; answer 429 with Retry-After (an @defer forbid). Only for HTTP requests.
	Defer Outcome = "DEFER"
	// StepUp: refused until a human approves; the reason carries the challenge for the agent to show
	// its user (an @step_up forbid). Only for HTTP requests.
	StepUp Outcome = "STEP_UP"
)

// Allowed reports whether the outcome lets the request through: ALLOW, PASSTHROUGH and MODIFY
// (after the modification). Every other outcome refuses.
func (o Outcome) Allowed() bool { return o == Allow || o == Passthrough || o == Modify }

// MethodConnect marks a connection-level intent: the sidecar knows a name and a port, not a request.
const MethodConnect = "CONNECT"

// MethodDNS marks a name lookup through the sidecar's resolver: Host is the queried name, Port 53.
const MethodDNS = "DNS"

// Request is one intent to judge. The daemon fills it from kernel-attested identity and what it
// sniffed; Decide normalizes Host and Path before anything matches them.
type Request struct {
	AgentID   string // principal: the agent that the kernel says owns the socket
	SessionID string
	Method    string // MethodConnect for connection-level intents, else the HTTP method
	Host      string // name (SNI, Host, DNS-learned) or IP literal, without port
	Port      int
	Path      string // "" for connection-level intents; may carry a query: context.query is read from it
	Transport string // http | https | tls | tcp | dns
	Time      time.Time

	// Kernel-attested attribution, passed to Cedar as context.
	PID    int
	UID    int
	Exe    string
	Cgroup string

	// Content is what an HTTP request carries. Zero for connection-level and DNS intents.
	Content Content

	// Session, when set, is the session state Cedar sees (fixtures, or a caller that tracks sessions
	// itself). nil: the engine's own tracker, which Observe feeds.
	Session *SessionState

	// Capability is Stage 1. nil skips the stage (no authority configured); otherwise Decide calls it
	// with the classified intent before Cedar and denies with its error as the reason.
	Capability Capability

	git *gitFacts // a fixture's git attributes, replacing what the request would give
}

// Content is what an HTTP request carries beyond its method, host and path. The HTTP engine fills
// Header and BodySize from the request head, asks NeedsBody, and buffers the body only when told to.
type Content struct {
	// Header is the request's header as received (HTTP/2 pseudo-headers excluded). Policies never
	// see credentials: see the Headers entity of firma.cedarschema.
	Header http.Header
	// BodySize is the body's length in bytes as sent (still content-encoded): Content-Length, or
	// what was counted while buffering. -1: unknown (chunked, not buffered). 0: no body.
	BodySize int64
	// Body is the buffered body, exactly as sent, when NeedsBody asked for it; nil otherwise.
	Body []byte
	// BodyTruncated: the body is longer than MaxBodyBytes and Body holds only its first
	// MaxBodyBytes bytes. A decision that needs the whole body (body_size or json) then denies
	// with ReasonBodyTooLarge; a git push is judged on what the prefix proves.
	BodyTruncated bool
}

// Capability checks a classified intent against the caller's capability token (Stage 1).
type Capability interface {
	// Authorize returns the token id on success, or an error whose text is the deny reason.
	Authorize(agentID, actionClass, resource string, now time.Time) (tokenID string, err error)
}

// Decision is the one canonical result of Decide: every decision yields exactly one audit record.
type Decision struct {
	Outcome         Outcome
	Reason          string
	MatchedPolicies []string // Cedar policy ids that determined the outcome
	// Fields are the context and resource attributes the determining policies read, sorted:
	// "context.json.model", "resource.host", "context.headers.user-agent". The audit record names
	// them as what decided.
	Fields      []string
	ActionClass string // "" when no mapping rule classified the intent
	Provider    string // e.g. "anthropic", when the mapping rule names one
	AgentID     string // the principal, as evaluated
	SessionID   string
	Host        string // normalized host, as evaluated
	Path        string // normalized path, as evaluated (no query)
	TokenID     string // capability token id, when Stage 1 ran
	// Remediation is set for MODIFY, DEFER and STEP_UP: what the HTTP engine must do.
	Remediation *Remediation
	// Git is set for a git smart-HTTP request on a git host: the repository and, for a push, the
	// ref updates, for the audit record.
	Git *GitRequest

	at time.Time // decision time, for Observe
}

// Resource is the decision's resource: host + path ("api.anthropic.com/v1/messages"), or the
// host alone for connection-level and DNS intents.
func (d *Decision) Resource() string { return d.Host + d.Path }
