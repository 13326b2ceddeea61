package policies

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go/types"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
)

// FuzzParseRules: a mapping-rules file either loads or fails with a *LoadError whose every problem
// names the file; rules that load classify any intent without panicking, and a rule that
// classifies an intent matches it.
func FuzzParseRules(f *testing.F) {
	f.Add([]byte("[[rules]]\nhost = \"api.openai.com\"\npath = \"/v1/*\"\naction_class = \"model.inference.chat\"\n"))
	f.Add([]byte("[[rules]]\nmethod = \"CONNECT\"\nhost = \"github.com:22\"\naction_class = \"code.write\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRules("f.toml", data, nil)
		if err != nil {
			le, ok := err.(*LoadError)
			if !ok {
				t.Fatalf("not a *LoadError: %T %v", err, err)
			}
			for _, p := range le.Problems {
				if p.File != "f.toml" {
					t.Fatalf("problem names %q", p.File)
				}
			}
			return
		}
		for _, in := range [][3]string{
			{"GET", "api.openai.com", "/v1/messages"}, {"CONNECT", "github.com:22", ""}, {"DNS", "x.y", ""},
			{"POST", "localhost:8080", "/a/b"}, {"GET", "[::1]:80", "/"},
		} {
			r, err := rs.Classify(in[0], in[1], in[2])
			if err != nil {
				t.Fatal(err)
			}
			if r == nil {
				continue
			}
			n, _ := normalize(&Request{AgentID: "-", Method: in[0], Host: in[1], Path: in[2]})
			if !r.Host.Match(n.host) || !r.matches(&n) {
				t.Fatalf("%v classified by %v, which does not match it", in, r)
			}
		}
	})
}

// FuzzHostPattern: a pattern that parses prints as a pattern that parses to itself, matches only
// normalized hosts it should, and a rule host's port round-trips.
func FuzzHostPattern(f *testing.F) {
	for _, s := range []string{"*.anthropic.com", "api.openai.com", "*", "fd00:ec2::254", "API.X.com.", "localhost:*", "[::1]:8080", "*:443"} {
		f.Add(s, "api.anthropic.com")
	}
	f.Fuzz(func(t *testing.T, pattern, host string) {
		if p, err := ParseHostPattern(pattern); err == nil {
			again, err := ParseHostPattern(p.String())
			if err != nil || again != p {
				t.Fatalf("%q prints as %q, which parses to %v, %v", pattern, p.String(), again, err)
			}
			if h, _, err := NormalizeHost(host); err == nil && p.Match(h) && p.kind == patternExact && h != p.value {
				t.Fatalf("exact %q matched %q", p.value, h)
			}
			if h, _, err := NormalizeHost(host); err == nil && p.kind == patternOneLabel && p.Match(h) && !strings.HasSuffix(h, "."+p.value) {
				t.Fatalf("%q matched %q", p, h)
			}
		}
		if p, port, err := parseRuleHost(pattern); err == nil {
			if port < 0 || port > 65535 {
				t.Fatalf("%q: port %d", pattern, port)
			}
			if _, err := ParseHostPattern(p.String()); err != nil {
				t.Fatalf("%q: host part %q does not parse: %v", pattern, p, err)
			}
		}
	})
}

// FuzzParsePush: any receive-pack body either parses to well-formed updates or fails; nothing
// panics, and a fast-forward is only ever claimed for an update of an existing ref.
func FuzzParsePush(f *testing.F) {
	zero, a, b := strings.Repeat("0", 40), strings.Repeat("a", 40), strings.Repeat("b", 40)
	f.Add([]byte("0067"+a+" "+b+" refs/heads/main\x00report-status side-band-64k object-format=sha1\n0000PACK\x00\x00\x00\x02\x00\x00\x00\x00"), false)
	f.Add([]byte("0044"+a+" "+zero+" refs/heads/x\n0000"), true)
	f.Fuzz(func(t *testing.T, body []byte, truncated bool) {
		updates, _, err := ParsePush(body, truncated, 1<<20, func(ref string) bool { return strings.HasSuffix(ref, "/main") })
		if err != nil {
			return
		}
		if len(updates) == 0 {
			t.Fatal("no error and no updates")
		}
		for _, u := range updates {
			if _, err := hex.DecodeString(u.Old); err != nil || len(u.Old) != len(u.New) {
				t.Fatalf("bad ids in %+v", u)
			}
			if u.FastForward && (u.Create || u.Delete) {
				t.Fatalf("fast-forward claimed for %+v", u)
			}
		}
	})
}

// FuzzPackCommits: a pack parses to commits whose ids are of the right length, within the budget.
func FuzzPackCommits(f *testing.F) {
	c1 := commitText(strings.Repeat("1", 40))
	f.Add(buildPack(f, []packObject{{typ: objCommit, data: c1}, {typ: objOfsDelta, data: makeDelta(c1, commitText(commitID(c1))), baseIdx: 0}}))
	f.Add([]byte("PACK\x00\x00\x00\x02\x00\x00\x00\x01\x95\x0a"))
	f.Fuzz(func(t *testing.T, pack []byte) {
		commits, _ := packCommits(pack, 20, false, 1<<20)
		for id := range commits {
			if len(id) != 40 {
				t.Fatalf("commit id %q", id)
			}
		}
	})
}

// FuzzJSONEntity: a body either is refused or gives typed attributes of exactly the schema's types,
// and the fields firma reads are the fields encoding/json reads.
func FuzzJSONEntity(f *testing.F) {
	for _, s := range []string{`{"model":"m","max_tokens":10,"stream":true,"temperature":0.5}`, `{"a":1,"A":2}`, `[1]`, `{"x":{"y":[1,2]}}`, `{"top_p":1e2}`} {
		f.Add([]byte(s), "application/json")
	}
	f.Fuzz(func(t *testing.T, body []byte, mt string) {
		ent, err := jsonEntity(body, mt)
		if err != nil {
			return
		}
		for k, v := range ent.Attributes.All() {
			want, ok := jsonFields[string(k)]
			if !ok {
				t.Fatalf("untyped attribute %q", k)
			}
			var good bool
			switch want {
			case resolved.IsType(resolved.StringType{}):
				_, good = v.(types.String)
			case resolved.IsType(resolved.LongType{}):
				_, good = v.(types.Long)
			case resolved.IsType(resolved.BoolType{}):
				_, good = v.(types.Boolean)
			default:
				_, good = v.(types.Decimal)
			}
			if !good {
				t.Fatalf("json.%s is a %T", k, v)
			}
		}
		var top map[string]json.RawMessage
		if json.Unmarshal(body, &top) != nil {
			return // not an object: no fields
		}
		for k, raw := range top {
			attr, isAttr := ent.Attributes.Get(types.String(k))
			tag, isTag := ent.Tags.Get(types.String(k))
			switch raw[0] {
			case 'n', '{', '[':
				if isAttr || isTag {
					t.Fatalf("%s (%s) is exposed", k, raw)
				}
			case '"':
				var s string
				json.Unmarshal(raw, &s)
				v := tag
				if isAttr {
					v = attr
				}
				if got, ok := v.(types.String); !ok || string(got) != s {
					t.Fatalf("%s: firma read %v, encoding/json %q", k, v, s)
				}
			default:
				if !isAttr && !isTag {
					t.Fatalf("%s (%s) is missing", k, raw)
				}
			}
		}
		if n := ent.Attributes.Len() + ent.Tags.Len(); n > len(top) {
			t.Fatalf("%d fields exposed, %d in the body", n, len(top))
		}
	})
}

// FuzzQuery: a query parses or is refused; RedactQuery never keeps the value of a secret parameter.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"a=1&b=2", "key=secret;x=1", "api%5Fkey=s&api_key=t", "%zz", "token"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := parseQuery(raw)
		red := RedactQuery(raw)
		if err != nil {
			return
		}
		rq, err := parseQuery(red)
		if err != nil {
			t.Fatalf("RedactQuery(%q) = %q, which does not parse: %v", raw, red, err)
		}
		for name, vals := range rq.values {
			if !SecretName(name) {
				continue
			}
			for _, v := range vals {
				if v != "REDACTED" && v != "" {
					t.Fatalf("RedactQuery(%q) kept %s=%q", raw, name, v)
				}
			}
		}
		_ = q.entity()
		_ = headerEntity(http.Header{"X": q.values["x"]}, nil)
	})
}

// FuzzSuggest: for any recorded decisions (one per line: "KIND METHOD HOST PATH CLASS OUTCOME",
// KIND h|t|c|d for https, plain http, tcp, dns), Suggest writes files that validate and that
// its own check proves: every covered intent allowed, every excluded one denied. It never fails on
// what an agent can make it record.
func FuzzSuggest(f *testing.F) {
	f.Add([]byte("h GET a.svc.test /v1/items - D\nh GET b.svc.test /v1/users - D\nd DNS a.svc.test - - D\nh POST b.svc.test /v1/x model.inference.chat A\n"), "tracker.test")
	f.Add([]byte("c CONNECT db.test:5432 - - A\nh GET x.co.uk / - D\nh GET y.co.uk /a*b - D\nh GET 127.0.0.2 /%22 code.read A\n"), "*.co.uk")
	f.Fuzz(func(t *testing.T, data []byte, exclude string) {
		classes := []string{"", "model.inference.chat", "code.read", "no.such.class", "network.dns.resolve"}
		var excl []string
		if _, err := ParseHostPattern(exclude); err == nil && exclude != "*" {
			excl = []string{exclude}
		}
		s, err := NewSuggester(SuggestOptions{AgentID: "fuzz", Exclude: excl})
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if i == 200 {
				break
			}
			fs := strings.Fields(line)
			if len(fs) < 6 || len(fs[0]) == 0 || len(fs[4]) == 0 {
				continue
			}
			o := Observed{Where: "fuzz", Seq: uint64(i + 1), Outcome: Allow, Request: Request{AgentID: "fuzz", Method: fs[1], Host: fs[2]}}
			if fs[5] == "D" {
				o.Outcome = Deny
			}
			o.Enforced = fs[5] == "E"
			o.ActionClass = classes[int(fs[4][0])%len(classes)]
			switch fs[0][0] {
			case 'h':
				o.Request.Transport, o.Request.Path = "https", fs[3]
			case 't':
				o.Request.Transport, o.Request.Path = "http", fs[3]
			case 'c':
				o.Request.Transport, o.Request.Method = "tcp", MethodConnect
			default:
				o.Request.Transport, o.Request.Method = "dns", MethodDNS
			}
			s.Add(o)
		}
		out, err := s.Suggest()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRules(RulesFileName, out.Rules, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseFiles(map[string][]byte{out.PolicyFile: out.Policy}, nil); err != nil {
			t.Fatal(err)
		}
	})
}
