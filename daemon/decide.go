package daemon

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/daemon/connector"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// Transport modes, as the audit record's transport.mode names them.
const (
	modeConnect = "connect" // TLS tunnelled by SNI without termination
	modeMITM    = "mitm"
	modeHTTP    = "http" // plain HTTP, judged per request
	modeTCP     = "tcp"  // other TCP, judged by DNS-learned name or address
	modeDNS     = "dns"
)

// Deny reasons the sidecar itself gives (the policy layer gives the rest).
const (
	reasonUnknownAgent = "unknown agent"
	reasonAuditFailed  = "audit log unavailable"
	reasonBadHello     = "unparsable TLS ClientHello"
	reasonNoHost       = "no host to judge"
	reasonSNIMismatch  = "TLS server name does not match the requested host"
	reasonFallback     = "mitm fallback"
	errConnector       = "connector_network_error"
)

// flow is what the sidecar knows about one accepted connection before judging anything in it.
type flow struct {
	agent     Agent
	agentErr  error // non-nil: no agent covers the cgroup
	cgroup    string
	origin    bpf.Origin
	hasOrigin bool
	exe       string
	hint      string // a name for the destination: the explicit CONNECT host, or learned from DNS
	port      int
	start     time.Time
}

// intent is one thing to judge in a flow.
type intent struct {
	method    string
	host      string // name or address, without port
	port      int
	path      string
	transport string // policies raw_transport: http | https | tls | tcp | dns
	mode      string // audit transport.mode
	sni       string
	note      string // extra reason text for sidecar-made records (e.g. fallback)
	refuse    string // the sidecar refuses by itself, with this reason, without asking the policy
	qtype     string // DNS query type, recorded as the DNS record's resource.method
}

// verdict is a decision plus the audit record that carries it.
type verdict struct {
	policies.Decision
	event *audit.Event
}

func (v verdict) allowed() bool {
	return v.Outcome == policies.Allow || v.Outcome == policies.Passthrough
}

// decide judges one intent and appends its audit record before returning: nothing reaches an
// upstream unless a record of the decision is on disk first. An audit failure turns any decision
// into DENY.
func (s *Sidecar) decide(ctx context.Context, f *flow, in intent) verdict {
	var d policies.Decision
	switch {
	case f.agentErr != nil:
		d = policies.Decision{Outcome: policies.Deny, Reason: reasonUnknownAgent}
	case in.refuse != "":
		d = policies.Decision{Outcome: policies.Deny, Reason: in.refuse}
	case in.host == "":
		d = policies.Decision{Outcome: policies.Deny, Reason: reasonNoHost}
	case s.trust.stale():
		d = policies.Decision{Outcome: policies.Deny, Reason: reasonStale}
	default:
		var err error
		d, err = s.engine.Decide(ctx, policies.Request{
			AgentID:    f.agent.ID,
			SessionID:  f.agent.SessionID,
			Method:     in.method,
			Host:       in.host,
			Port:       in.port,
			Path:       in.path,
			Transport:  in.transport,
			Time:       time.Now(),
			PID:        int(f.origin.PID),
			UID:        int(f.origin.UID),
			Exe:        f.exe,
			Cgroup:     f.cgroup,
			Capability: f.agent.Capability,
		})
		if err != nil {
			d = policies.Decision{Outcome: policies.Deny, Reason: err.Error()}
		}
	}
	if in.note != "" && d.Outcome != policies.Deny {
		d.Reason = joinReason(in.note, d.Reason)
	}
	ev := s.event(f, in, d)
	if err := s.audit.Append(ev); err != nil {
		s.log.Error().Err(err).Msg("audit append failed: denying")
		d = policies.Decision{Outcome: policies.Deny, Reason: reasonAuditFailed}
		ev.Decision.Outcome, ev.Decision.Reason = string(d.Outcome), d.Reason
	}
	s.logDecision(f, in, d)
	return verdict{Decision: d, event: ev}
}

func joinReason(a, b string) string {
	if b == "" {
		return a
	}
	return a + ": " + b
}

// event builds the canonical decision record.
func (s *Sidecar) event(f *flow, in intent, d policies.Decision) *audit.Event {
	resource := audit.Resource{Host: in.host}
	if in.mode == modeMITM || in.mode == modeHTTP {
		resource.Method = in.method
		resource.Path = in.path
		if d.Path != "" {
			resource.Path = d.Path
		}
		if d.Provider != "" {
			p := d.Provider
			resource.Provider = &p
		}
	} else if in.mode == modeDNS {
		// A lookup is of a name, not a connection to its port 53: the record carries the name (the
		// guide's DENY check reads resource.host == "paste.rs") and the query type as the method.
		resource.Method = in.qtype
	} else if in.port != 0 {
		resource.Host = hostPort(in.host, in.port)
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
	ev := &audit.Event{
		Kind: audit.KindDecision,
		Envelope: &audit.Envelope{
			Agent: audit.Agent{
				AgentID:   f.agent.ID,
				SessionID: f.agent.SessionID,
				Cgroup:    f.cgroup,
				PID:       int(f.origin.PID),
				Exe:       f.exe,
				Comm:      f.origin.Comm,
				UID:       int(f.origin.UID),
			},
			Intent:    audit.Intent{ActionClass: action, Resource: resource, RawTransport: in.transport},
			Transport: audit.Transport{Mode: in.mode, SNI: in.sni},
		},
		Decision: &audit.Decision{Outcome: string(d.Outcome), MatchedPolicies: matched, Reason: d.Reason},
	}
	if f.hasOrigin {
		ev.Envelope.Transport.OrigDst = f.origin.Dst.String()
	}
	if d.TokenID != "" {
		ev.Capability = &audit.Capability{TokenID: d.TokenID}
	}
	return ev
}

// complete appends the record that closes an allowed decision: what was dialed, bytes each way,
// duration, upstream status, error. It repeats the decision's envelope, so that every record names
// the process behind it. A failure here is logged: the flow already happened.
func (s *Sidecar) complete(v verdict, res audit.Result, dialed netip.AddrPort) {
	if v.event == nil {
		return
	}
	ev := &audit.Event{Kind: audit.KindCompletion, DecisionID: v.event.ID, Result: &res}
	if v.event.Envelope != nil {
		env := *v.event.Envelope
		if dialed.IsValid() {
			env.Transport.Dialed = dialed.String()
		}
		ev.Envelope = &env
	}
	if res.Error != "" && v.Outcome == policies.Allow {
		ev.Decision = &audit.Decision{Outcome: string(policies.Abort), MatchedPolicies: []string{}, Reason: res.Error}
	}
	if err := s.audit.Append(ev); err != nil {
		s.log.Error().Err(err).Str(logfields.EventID, v.event.ID).Msg("audit completion append failed")
	}
}

func (s *Sidecar) logDecision(f *flow, in intent, d policies.Decision) {
	lvl := zerolog.InfoLevel
	if d.Outcome == policies.Allow {
		lvl = zerolog.DebugLevel
	}
	e := s.log.WithLevel(lvl).
		Str(logfields.Outcome, string(d.Outcome)).
		Str(logfields.Agent, f.agent.ID).
		Uint32(logfields.PID, f.origin.PID).
		Str(logfields.Mode, in.mode).
		Str(logfields.Host, in.host).
		Str(logfields.Reason, d.Reason)
	if in.port != 0 {
		e = e.Int(logfields.Port, in.port)
	}
	if in.path != "" {
		e = e.Str(logfields.Method, in.method).Str(logfields.Path, in.path)
	}
	if len(d.MatchedPolicies) > 0 {
		e = e.Strs(logfields.Policies, d.MatchedPolicies)
	}
	e.Msg("decision")
}

func hostPort(host string, port int) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}

// errorResult describes an upstream failure for a completion record.
func errorResult(err error, start time.Time) audit.Result {
	msg := errConnector + ": " + err.Error()
	var ae *connector.AddrError
	if errors.As(err, &ae) {
		msg = errConnector + ": refused " + ae.Error()
	}
	return audit.Result{Error: msg, DurationMS: time.Since(start).Milliseconds()}
}
