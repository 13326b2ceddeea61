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
	mode := Mode(env.Transport.Mode)
	switch {
	case mode == ModeMITM && res.Method == "":
		// The connection to an intercepted host, judged as a whole before its requests: a
		// connection-level record (name:port, no method), like a tunnel's.
		r.Method, r.Host, r.Port = connectionLevel(res.Host)
	case mode == ModeMITM || mode == ModeHTTP:
		if res.Method == "" {
			return o, "an HTTP record without a method", true
		}
		r.Method, r.Host, r.Port, r.Path = res.Method, res.Host, res.Port, res.Path
	case mode == ModeDNS:
		// The record's method is the query type; the intent's is DNS.
		r.Method, r.Host, r.Port = policies.MethodDNS, res.Host, res.Port
	case mode == ModeConnect || mode == ModeTCP:
		r.Method, r.Host, r.Port = connectionLevel(res.Host)
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

// connectionLevel reads a connection-level record's name:port back as a CONNECT intent; a
// malformed one is judged again as it was.
func connectionLevel(hostPort string) (method, host string, port int) {
	host, port, err := hostname.Parse(hostPort)
	if err != nil {
		host = hostPort
	}
	return policies.MethodConnect, host, port
}
