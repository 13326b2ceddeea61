package policies

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
)

// RemediationKind is what a forbid policy asks for instead of a plain refusal.
type RemediationKind string

// The remediation annotations on forbid policies, as OpenFirma defines them.
const (
	// RemedyModify is @modify("redact_header:<name>"): forward the request without that header.
	RemedyModify RemediationKind = "modify"
	// RemedyDefer is @defer("<ms>"): answer 429 with Retry-After.
	RemedyDefer RemediationKind = "defer"
	// RemedyStepUp is @step_up("<challenge>"): refuse with the challenge for the agent's user.
	RemedyStepUp RemediationKind = "step_up"
)

// Remediation is what the HTTP engine does for a MODIFY, DEFER or STEP_UP decision.
type Remediation struct {
	Kind RemediationKind
	// RedactHeaders (MODIFY): lowercase names of the headers to remove before forwarding.
	RedactHeaders []string
	// RetryAfter (DEFER): how long the agent should wait; Retry-After is it in whole seconds,
	// rounded up.
	RetryAfter time.Duration
	// Challenge (STEP_UP): what the agent should show its user.
	Challenge string
}

// RetryAfterSeconds is the Retry-After header value of a DEFER: whole seconds, at least 1.
func (r *Remediation) RetryAfterSeconds() int {
	return max(1, int((r.RetryAfter+time.Second-1)/time.Second))
}

const (
	maxDefer     = 24 * time.Hour
	maxChallenge = 512
)

var remediationKeys = []RemediationKind{RemedyModify, RemedyDefer, RemedyStepUp}

// parseRemediation reads a policy's remediation annotation, if it has one. A problem is keyed by the
// annotation it is about, so that the caller reports it at that annotation's line.
func parseRemediation(cp *cedar.Policy, forbid bool) (*Remediation, map[RemediationKind]error) {
	var found []RemediationKind
	annotations := cp.Annotations()
	for _, k := range remediationKeys {
		if _, ok := annotations[types.AnnotationKey(k)]; ok {
			found = append(found, k)
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	errs := map[RemediationKind]error{}
	if !forbid {
		errs[found[0]] = fmt.Errorf("@%s is a remediation: it applies to forbid policies only", found[0])
		return nil, errs
	}
	if len(found) > 1 {
		errs[found[1]] = fmt.Errorf("@%s and @%s: a policy has at most one remediation", found[0], found[1])
		return nil, errs
	}
	kind := found[0]
	value := string(annotations[types.AnnotationKey(kind)])
	r := &Remediation{Kind: kind}
	var err error
	switch kind {
	case RemedyModify:
		err = r.parseModify(value)
	case RemedyDefer:
		err = r.parseDefer(value)
	case RemedyStepUp:
		err = r.parseStepUp(value)
	}
	if err != nil {
		errs[kind] = fmt.Errorf("@%s(%q): %v", kind, value, err)
		return nil, errs
	}
	return r, nil
}

func (r *Remediation) parseModify(v string) error {
	op, arg, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(op) != "redact_header" {
		return errors.New(`want "redact_header:<header name>"`)
	}
	name := strings.ToLower(strings.TrimSpace(arg))
	if !isHeaderName(name) {
		return fmt.Errorf("%q is not a header name", arg)
	}
	r.RedactHeaders = []string{name}
	return nil
}

func (r *Remediation) parseDefer(v string) error {
	ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || ms < 1 {
		return errors.New("want a positive number of milliseconds")
	}
	if d := time.Duration(ms) * time.Millisecond; d <= maxDefer {
		r.RetryAfter = d
		return nil
	}
	return fmt.Errorf("at most %d ms (%s)", maxDefer.Milliseconds(), maxDefer)
}

func (r *Remediation) parseStepUp(v string) error {
	c := strings.TrimSpace(v)
	switch {
	case c == "":
		return errors.New("want a challenge to show the user")
	case len(c) > maxChallenge:
		return fmt.Errorf("challenge longer than %d bytes", maxChallenge)
	case strings.IndexFunc(c, unicode.IsControl) >= 0:
		return errors.New("challenge has control characters")
	}
	r.Challenge = c
	return nil
}

// isHeaderName reports whether s is an HTTP field name (RFC 9110 token), lowercase.
func isHeaderName(s string) bool {
	return s != "" && isToken(strings.ToUpper(s))
}

// combine merges the remediations of the forbids that matched one request. The strongest kind wins
// (step_up, then defer, then modify); step-up challenges are joined, the longest defer is kept and
// the headers to redact are united.
func combine(ps []*policy) *Remediation {
	var out *Remediation
	rank := map[RemediationKind]int{RemedyModify: 1, RemedyDefer: 2, RemedyStepUp: 3}
	for _, p := range ps {
		r := p.remediation
		switch {
		case out == nil || rank[r.Kind] > rank[out.Kind]:
			c := *r
			c.RedactHeaders = slices.Clone(r.RedactHeaders)
			out = &c
		case r.Kind != out.Kind:
		case r.Kind == RemedyStepUp && !strings.Contains(out.Challenge, r.Challenge):
			out.Challenge += "; " + r.Challenge
		case r.Kind == RemedyDefer:
			out.RetryAfter = max(out.RetryAfter, r.RetryAfter)
		case r.Kind == RemedyModify:
			out.RedactHeaders = append(out.RedactHeaders, r.RedactHeaders...)
		}
	}
	slices.Sort(out.RedactHeaders)
	out.RedactHeaders = slices.Compact(out.RedactHeaders)
	return out
}

// reason is the decision reason a remediation gives; the audit record and the 403/429 body show it.
func (r *Remediation) reason() string {
	switch r.Kind {
	case RemedyModify:
		return ReasonModified + ": redact_header " + strings.Join(r.RedactHeaders, ", ")
	case RemedyDefer:
		return fmt.Sprintf("%s: retry after %d ms", ReasonDeferred, r.RetryAfter.Milliseconds())
	}
	return ReasonStepUp + ": " + r.Challenge
}

// outcome is the decision outcome of a remediation.
func (r *Remediation) outcome() Outcome {
	switch r.Kind {
	case RemedyModify:
		return Modify
	case RemedyDefer:
		return Defer
	}
	return StepUp
}
