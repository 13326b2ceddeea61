package authority

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/openfirma/firma/policies"
)

// ErrIssuanceDenied is wrapped when the issuance policies do not permit a requested action.
var ErrIssuanceDenied = errors.New("issuance denied")

// IssueRequest is what `firma authority issue` (or POST /v1/capabilities) asks for.
type IssueRequest struct {
	AgentID       string
	SessionID     string
	Actions       []string
	ResourceScope string
	TTL           time.Duration
}

// Issued is a signed capability.
type Issued struct {
	Raw     string
	Claims  *Claims
	Clamped bool // the requested TTL exceeded max_ttl_seconds and was cut to it
}

// File returns the capability file for the issued token.
func (i *Issued) File() CapabilityFile { return NewCapabilityFile(i.Raw, i.Claims) }

// Issuer mints capabilities: it evaluates the issuance policies, clamps the TTL and signs.
type Issuer struct {
	key    Signer
	set    *policies.Set
	maxTTL time.Duration
	now    func() time.Time
}

// NewIssuer loads the issuance policies in dir, validated against schema (nil: the embedded one).
func NewIssuer(key Signer, dir string, schema *policies.Schema, maxTTL time.Duration) (*Issuer, error) {
	if maxTTL <= 0 {
		return nil, errors.New("max TTL must be positive")
	}
	set, err := policies.LoadDir(dir, schema)
	if err != nil {
		return nil, fmt.Errorf("loading issuance policies: %w", err)
	}
	return &Issuer{key: key, set: set, maxTTL: maxTTL, now: time.Now}, nil
}

// Policies returns the issuance policy set.
func (is *Issuer) Policies() *policies.Set { return is.set }

// Issue checks req, asks the issuance policies about every action (principal
// Firma::Agent::"<agent>", action Firma::Action::"<class>", resource Firma::Resource::"<scope>"
// with host and path being the scope's two parts; context session_id and timestamp_ms), clamps
// the TTL to the maximum and signs. A refusal wraps ErrIssuanceDenied and names the action.
func (is *Issuer) Issue(req IssueRequest) (*Issued, error) {
	if err := is.check(req); err != nil {
		return nil, err
	}
	actions := slices.Clone(req.Actions)
	slices.Sort(actions)
	actions = slices.Compact(actions)
	now := is.now().UTC().Truncate(time.Second)
	host, path, _ := cutPath(req.ResourceScope)
	for _, a := range actions {
		v, err := is.set.Evaluate(policies.Query{
			AgentID:     req.AgentID,
			ActionClass: a,
			Resource:    req.ResourceScope,
			Attributes:  map[string]any{"host": host, "path": path, "method": "", "port": int64(0)},
			Context:     map[string]any{"session_id": req.SessionID, "timestamp_ms": now.UnixMilli()},
		})
		if err != nil {
			return nil, fmt.Errorf("evaluating issuance of %q: %w", a, err)
		}
		if !v.Allowed {
			return nil, fmt.Errorf("%w: action %q for agent %q: %s", ErrIssuanceDenied, a, req.AgentID, denyWhy(v))
		}
	}
	ttl, clamped := req.TTL, false
	if ttl > is.maxTTL {
		ttl, clamped = is.maxTTL, true
	}
	c := Claims{
		TokenID:       NewTokenID(),
		AgentID:       req.AgentID,
		SessionID:     req.SessionID,
		ActionSet:     actions,
		ResourceScope: req.ResourceScope,
		IssuedAt:      now,
		NotBefore:     now,
		Expires:       now.Add(ttl),
	}
	raw, err := SignCapability(is.key, c)
	if err != nil {
		return nil, err
	}
	c.Issuer = IssuerName
	return &Issued{Raw: raw, Claims: &c, Clamped: clamped}, nil
}

func (is *Issuer) check(req IssueRequest) error {
	var errs []error
	if !ValidID(req.AgentID) {
		errs = append(errs, fmt.Errorf("agent id %q is not a valid id", req.AgentID))
	}
	if !ValidID(req.SessionID) {
		errs = append(errs, fmt.Errorf("session id %q is not a valid id", req.SessionID))
	}
	if len(req.Actions) == 0 {
		errs = append(errs, errors.New("no action requested"))
	}
	schema := is.set.Schema()
	for _, a := range req.Actions {
		if !schema.HasActionClass(a) {
			errs = append(errs, fmt.Errorf("action %q is not an action class of %s", a, schema.Name()))
		}
	}
	if err := ValidateScope(req.ResourceScope); err != nil {
		errs = append(errs, err)
	}
	if req.TTL < time.Second {
		errs = append(errs, fmt.Errorf("ttl %s: must be at least one second", req.TTL))
	}
	return errors.Join(errs...)
}

// denyWhy explains a deny verdict in one line.
func denyWhy(v policies.Verdict) string {
	var b strings.Builder
	if len(v.Policies) > 0 {
		fmt.Fprintf(&b, "forbidden by %s", strings.Join(v.Policies, ", "))
	} else {
		b.WriteString("no issuance policy permits it")
	}
	if len(v.Errors) > 0 {
		fmt.Fprintf(&b, " (evaluation errors: %s)", strings.Join(v.Errors, "; "))
	}
	return b.String()
}
