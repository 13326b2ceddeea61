package audit

import (
	"errors"
	"strconv"
	"time"
	"unicode/utf8"
)

// The writer encodes events by hand rather than with encoding/json's reflection, which was a
// quarter of the CPU an append cost. The bytes are exactly what encoding/json (with HTML escaping
// off) writes for Event: FuzzEncodeMatchesEncodingJSON holds the two together, so the canonical
// form does not depend on which one wrote a line.

var errTimeRange = errors.New("Time.MarshalJSON: year outside of range [0,9999]")

// appendJSONString is encoding/json's string encoding with HTML escaping off.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSONTime is Time.MarshalJSON.
func appendJSONTime(dst []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, errTimeRange
	}
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"'), nil
}

// jsonObject appends the members of one object; the first member gets no comma.
type jsonObject struct {
	b     []byte
	first bool
	err   error
}

func (o *jsonObject) key(k string) {
	if o.first {
		o.first = false
	} else {
		o.b = append(o.b, ',')
	}
	o.b = append(o.b, '"')
	o.b = append(o.b, k...)
	o.b = append(o.b, '"', ':')
}

func (o *jsonObject) open()  { o.b, o.first = append(o.b, '{'), true }
func (o *jsonObject) close() { o.b, o.first = append(o.b, '}'), false }

func (o *jsonObject) str(k, v string) {
	o.key(k)
	o.b = appendJSONString(o.b, v)
}

func (o *jsonObject) strOmit(k, v string) {
	if v != "" {
		o.str(k, v)
	}
}

func (o *jsonObject) int(k string, v int64) {
	o.key(k)
	o.b = strconv.AppendInt(o.b, v, 10)
}

func (o *jsonObject) intOmit(k string, v int64) {
	if v != 0 {
		o.int(k, v)
	}
}

func (o *jsonObject) boolOmit(k string, v bool) {
	if v {
		o.key(k)
		o.b = append(o.b, "true"...)
	}
}

// strs appends a string array (null when nil), as encoding/json writes a []string.
func (o *jsonObject) strs(v []string) {
	if v == nil {
		o.b = append(o.b, "null"...)
		return
	}
	o.b = append(o.b, '[')
	for i, s := range v {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = appendJSONString(o.b, s)
	}
	o.b = append(o.b, ']')
}

// strsOmit is a []string member with omitempty: left out when empty.
func (o *jsonObject) strsOmit(k string, v []string) {
	if len(v) > 0 {
		o.key(k)
		o.strs(v)
	}
}

// git appends the intent's git member.
func (o *jsonObject) git(g *Git) {
	o.key("git")
	o.open()
	o.str("service", g.Service)
	o.str("owner", g.Owner)
	o.str("repo", g.Repo)
	if len(g.Updates) > 0 {
		o.key("updates")
		o.b = append(o.b, '[')
		for i := range g.Updates {
			if i > 0 {
				o.b = append(o.b, ',')
			}
			u := &g.Updates[i]
			o.open()
			o.str("ref", u.Ref)
			o.str("old", u.Old)
			o.str("new", u.New)
			o.boolOmit("create", u.Create)
			o.boolOmit("delete", u.Delete)
			o.boolOmit("force", u.Force)
			o.boolOmit("protected", u.Protected)
			o.close()
		}
		o.b = append(o.b, ']')
	}
	o.intOmit("updates_total", int64(g.UpdatesTotal))
	o.strOmit("pack_problem", g.PackProblem)
	o.close()
}

func (o *jsonObject) timeOmit(k string, t *time.Time) {
	if t == nil {
		return
	}
	o.key(k)
	b, err := appendJSONTime(o.b, *t)
	if err != nil {
		o.err = err
		return
	}
	o.b = b
}

// appendTail appends eventTail's object: kind, decision_id, envelope, capability, decision,
// result, log. Every member of Event and the types under it is written here, in struct order.
func appendTail(dst []byte, ev *Event) ([]byte, error) {
	o := jsonObject{b: dst}
	o.open()
	o.str("kind", string(ev.Kind))
	o.strOmit("decision_id", ev.DecisionID)
	if e := ev.Envelope; e != nil {
		o.key("envelope")
		o.open()
		o.key("agent")
		o.open()
		a := &e.Agent
		o.str("agent_id", a.AgentID)
		o.str("session_id", a.SessionID)
		o.str("cgroup", a.Cgroup)
		o.int("pid", int64(a.PID))
		o.str("exe", a.Exe)
		o.str("comm", a.Comm)
		o.int("uid", int64(a.UID))
		o.close()
		o.key("intent")
		o.open()
		o.key("action_class")
		if e.Intent.ActionClass == nil {
			o.b = append(o.b, "null"...)
		} else {
			o.b = appendJSONString(o.b, *e.Intent.ActionClass)
		}
		o.key("resource")
		o.open()
		r := &e.Intent.Resource
		o.str("host", r.Host)
		o.strOmit("path", r.Path)
		o.strOmit("query", r.Query)
		if r.Provider != nil {
			o.str("provider", *r.Provider)
		}
		o.strOmit("method", r.Method)
		o.intOmit("port", int64(r.Port))
		o.close()
		o.str("raw_transport", e.Intent.RawTransport)
		if c := e.Intent.Content; c != nil {
			o.key("content")
			o.open()
			o.strOmit("content_type", c.ContentType)
			o.int("body_size", c.BodySize)
			o.boolOmit("body_buffered", c.BodyBuffered)
			o.boolOmit("body_truncated", c.BodyTruncated)
			o.close()
		}
		if g := e.Intent.Git; g != nil {
			o.git(g)
		}
		o.close()
		o.key("transport")
		o.open()
		t := &e.Transport
		o.str("mode", t.Mode)
		o.strOmit("sni", t.SNI)
		o.strOmit("orig_dst", t.OrigDst)
		o.strOmit("dialed", t.Dialed)
		o.close()
		o.close()
	}
	if c := ev.Capability; c != nil {
		o.key("capability")
		o.open()
		o.str("token_id", c.TokenID)
		o.close()
	}
	if d := ev.Decision; d != nil {
		o.key("decision")
		o.open()
		o.str("outcome", d.Outcome)
		o.key("matched_policies")
		o.strs(d.MatchedPolicies)
		o.str("reason", d.Reason)
		if d.Enforced != nil {
			o.key("enforced")
			o.b = strconv.AppendBool(o.b, *d.Enforced)
		}
		o.boolOmit("sidecar_refusal", d.SidecarRefusal)
		o.strsOmit("fields", d.Fields)
		if m := d.Remediation; m != nil {
			o.key("remediation")
			o.open()
			o.str("kind", m.Kind)
			o.strsOmit("redact_headers", m.RedactHeaders)
			o.intOmit("retry_after_ms", m.RetryAfterMS)
			o.strOmit("challenge", m.Challenge)
			o.close()
		}
		o.close()
	}
	if r := ev.Result; r != nil {
		o.key("result")
		o.open()
		o.int("bytes_up", r.BytesUp)
		o.int("bytes_down", r.BytesDown)
		o.int("duration_ms", r.DurationMS)
		o.intOmit("upstream_status", int64(r.UpstreamStatus))
		o.strsOmit("injected", r.Injected)
		o.strOmit("path", r.Path)
		o.strOmit("error", r.Error)
		o.close()
	}
	if l := ev.Log; l != nil {
		o.key("log")
		o.open()
		o.str("event", string(l.Event))
		o.strOmit("reason", l.Reason)
		o.strOmit("previous_file", l.PreviousFile)
		o.strOmit("key_id", l.KeyID)
		o.timeOmit("since", l.Since)
		o.intOmit("refused", l.Refused)
		o.strOmit("error", l.Error)
		o.intOmit("torn_bytes", l.TornBytes)
		o.strOmit("torn_saved_to", l.TornSavedTo)
		o.strOmit("agent_id", l.AgentID)
		o.strOmit("class", l.Class)
		o.intOmit("suppressed", l.Suppressed)
		o.timeOmit("until", l.Until)
		o.close()
	}
	o.close()
	return o.b, o.err
}
