package judge

import (
	"strings"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/hostname"
	"github.com/openfirma/firma/policies"
)

// Observed reads a decision back from its audit record, for `firma policy suggest` and `firma
// policy replay`: the inverse of the record Decide writes, down to the policies.Request the policy
// engine was given (Stage 1 aside: a record names no capability). The judge owns both directions,
// so that what a record carries and what a replay reconstructs cannot drift apart.
//
// decision is false for a record that is not a decision (a completion, the log's own records).
// skip, when not "", says why a decision cannot be judged again: a kernel refusal, or a refusal
// the sidecar made by itself without asking the policy.
func Observed(rec audit.Record) (o policies.Observed, skip string, decision bool) {
	ev := rec.Event
	if ev == nil || ev.Kind != audit.KindDecision || ev.Envelope == nil || ev.Decision == nil {
		return o, "", false
	}
	env, d := ev.Envelope, ev.Decision
	switch {
	case env.Transport.Mode == string(ModeKernel):
		return o, "a kernel refusal: the kernel decides it, not the policy", true
	case d.SidecarRefusal:
		reason, _, _ := strings.Cut(d.Reason, ":")
		return o, "the sidecar's own refusal (" + reason + "): not a policy decision", true
	}
	res := env.Intent.Resource
	r := policies.Request{
		AgentID:   env.Agent.AgentID,
		SessionID: env.Agent.SessionID,
		Transport: env.Intent.RawTransport,
		Time:      ev.Time,
		PID:       env.Agent.PID,
		UID:       env.Agent.UID,
		Exe:       env.Agent.Exe,
		Cgroup:    env.Agent.Cgroup,
	}
	switch Mode(env.Transport.Mode) {
	case ModeMITM, ModeHTTP:
		if res.Method == "" {
			return o, "an HTTP record without a method", true
		}
		r.Method, r.Host, r.Port, r.Path = res.Method, res.Host, res.Port, res.Path
	case ModeDNS:
		// The record's method is the query type; the intent's is DNS.
		r.Method, r.Host, r.Port = policies.MethodDNS, res.Host, res.Port
	case ModeConnect, ModeTCP:
		host, port, err := hostname.Parse(res.Host)
		if err != nil {
			host = res.Host // judged again as it was: malformed
		}
		r.Method, r.Host, r.Port = policies.MethodConnect, host, port
	default:
		return o, "transport mode " + env.Transport.Mode + ": unknown to this firma", true
	}
	o = policies.Observed{
		Where:    rec.Where(),
		Seq:      ev.Seq,
		Request:  r,
		Outcome:  policies.Outcome(d.Outcome),
		Reason:   d.Reason,
		Policies: d.MatchedPolicies,
		Enforced: d.Enforced == nil || *d.Enforced,
	}
	if c := env.Intent.ActionClass; c != nil {
		o.ActionClass = *c
	}
	if p := res.Provider; p != nil {
		o.Provider = *p
	}
	return o, "", true
}
