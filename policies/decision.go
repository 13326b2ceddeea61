package policies

import "time"

// Outcome is the verdict of one decision. The strings are the audit log's decision.outcome values.
type Outcome string

const (
	Allow       Outcome = "ALLOW"
	Deny        Outcome = "DENY"
	Passthrough Outcome = "PASSTHROUGH" // unclassified intent with default_protected = false
	Abort       Outcome = "ABORT"       // allowed, then failed while carrying it out (set by the daemon)
)

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
	Path      string // "" for connection-level intents; may carry a query, which is kept out of the resource
	Transport string // http | https | tls | tcp | dns
	Time      time.Time

	// Kernel-attested attribution, passed to Cedar as context.
	PID    int
	UID    int
	Exe    string
	Cgroup string

	// Capability is Stage 1. nil skips the stage (no authority configured); otherwise Decide calls it
	// with the classified intent before Cedar and denies with its error as the reason.
	Capability Capability
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
	ActionClass     string   // "" when no mapping rule classified the intent
	Provider        string   // e.g. "anthropic", when the mapping rule names one
	Host            string   // normalized host, as evaluated
	Path            string   // normalized path, as evaluated (no query)
	TokenID         string   // capability token id, when Stage 1 ran
}
