package audit

import (
	"bytes"
	"testing"
	"time"
)

// FuzzEncodeMatchesEncodingJSON: the hand-written encoder writes, for any event, the bytes
// encoding/json (HTML escaping off) writes for it.
func FuzzEncodeMatchesEncodingJSON(f *testing.F) {
	f.Add("01J", "claude-code", "api.anthropic.com:443", "/v1/messages?a=<b>&c", "forbid_at_x.cedar_1", "reason \"quoted\" \n\t\x01", int64(1), uint16(0xffff), int64(1700000000123456789))
	f.Add("", "", "", "", "", "", int64(0), uint16(0), int64(0))
	f.Add("01K", "monitored", "a.example.com", "/v1/x", "permit_at_a.cedar_3", "no policy permits", int64(443), uint16(0x0891), int64(1700000000123456789))
	f.Add("\xff\xfe", "ag\u2028ent", "h\u2029", "\x7f<>&", "é", "\\", int64(-5), uint16(0x5555), int64(-62135596800000000))
	f.Add("01K", "claude", "git.test", "/o/r.git/git-receive-pack", "forbid_at_g.cedar_3", "MODIFY", int64(12), uint16(0xffff), int64(1700000000000000000))
	f.Add("01L", "claude", "git.test", "", "", "", int64(0), uint16(0xf8f1), int64(1))
	f.Fuzz(func(t *testing.T, id, agent, host, path, policy, text string, n int64, flags uint16, nanos int64) {
		on := func(bit uint) bool { return flags&(1<<bit) != 0 }
		at := time.Unix(0, nanos).UTC()
		ev := &Event{ID: id, Time: at, Kind: Kind(text), DecisionID: policy}
		if on(0) {
			ev.Envelope = &Envelope{
				Agent:     Agent{AgentID: agent, SessionID: text, Cgroup: path, PID: int(n), Exe: host, Comm: id, UID: int(n >> 3)},
				Intent:    Intent{Resource: Resource{Host: host, Path: path, Method: text, Port: int(n % 70000)}, RawTransport: agent},
				Transport: Transport{Mode: text, SNI: host, OrigDst: path, Dialed: policy},
			}
			if on(1) {
				ev.Envelope.Intent.ActionClass = &policy
			}
			if on(2) {
				ev.Envelope.Intent.Resource.Provider = &agent
			}
			if on(11) {
				ev.Envelope.Intent.Resource.Query = text
				ev.Envelope.Intent.Content = &Content{ContentType: policy, BodySize: n, BodyBuffered: n%2 == 0, BodyTruncated: n%3 == 0}
			}
			if on(12) {
				ev.Envelope.Intent.Git = &Git{Service: text, Owner: agent, Repo: host, UpdatesTotal: int(n % 1000), PackProblem: path}
				if on(13) {
					ev.Envelope.Intent.Git.Updates = []RefUpdate{
						{Ref: path, Old: id, New: policy, Create: true, Protected: n%2 == 0},
						{Ref: text, Delete: true, Force: n%3 == 0},
						{},
					}
				}
			}
		}
		if on(3) {
			ev.Capability = &Capability{TokenID: id}
		}
		if on(4) {
			ev.Decision = &Decision{Outcome: text, Reason: path}
			if on(5) {
				ev.Decision.MatchedPolicies = []string{}
			}
			if on(6) {
				ev.Decision.MatchedPolicies = []string{policy, text, ""}
			}
			if on(14) {
				enforced := n%2 == 0
				ev.Decision.Enforced = &enforced
				ev.Decision.Fields = []string{path, text}
			}
			if on(15) {
				ev.Decision.Remediation = &Remediation{Kind: text, RedactHeaders: []string{host, agent}, RetryAfterMS: n, Challenge: path}
			}
			ev.Decision.SidecarRefusal = on(11)
		}
		if on(7) {
			ev.Result = &Result{BytesUp: n, BytesDown: -n, DurationMS: n / 7, UpstreamStatus: int(n % 600), Error: text}
			if on(15) {
				ev.Result.Injected = []string{host, policy}
			}
			if on(14) {
				ev.Result.Path = path
			}
		}
		if on(8) {
			ev.Log = &LogRecord{Event: LogEvent(text), Reason: path, PreviousFile: host, KeyID: id, Refused: n, Error: policy,
				TornBytes: n / 3, TornSavedTo: agent, AgentID: agent, Class: policy, Suppressed: n / 5}
			if on(9) {
				ev.Log.Since = &at
			}
			if on(10) {
				u := at.Add(time.Duration(n))
				ev.Log.Until = &u
			}
		}
		p, perr := encodePending(ev)
		ev.Seq, ev.PrevHash = uint64(n)&0xffffff, GenesisHash
		want, jerr := encodeJSON(ev)
		if (perr != nil) != (jerr != nil) {
			t.Fatalf("errors differ: hand %v, encoding/json %v", perr, jerr)
		}
		if perr != nil {
			return
		}
		if got := p.appendBody(nil, ev.Seq, GenesisHash); !bytes.Equal(got, want) {
			t.Fatalf("hand-encoded:\n%s\nencoding/json:\n%s", got, want)
		}
	})
}

// BenchmarkEncode is what encoding one decision costs before it enters the chain.
func BenchmarkEncode(b *testing.B) {
	ev := decision(1, "api.anthropic.com", "ALLOW")
	ev.ID, ev.Time = newID(time.Now()), time.Now().UTC()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodePending(ev); err != nil {
			b.Fatal(err)
		}
	}
}
