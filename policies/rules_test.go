package policies

import (
	"strings"
	"testing"
)

func TestHostPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		match   []string
		miss    []string
	}{
		{"*.anthropic.com", []string{"api.anthropic.com", "console.anthropic.com"}, []string{"anthropic.com", "api.dev.anthropic.com", "xanthropic.com", "api.anthropic.com.evil"}},
		{"api.anthropic.com", []string{"api.anthropic.com"}, []string{"api.anthropic.co", "x.api.anthropic.com"}},
		{"API.Anthropic.com.", []string{"api.anthropic.com"}, nil},
		{"*", []string{"a", "1.2.3.4", "x.y.z"}, nil},
		{"*.168.1.1", nil, []string{"192.168.1.1"}}, // IP literals only match exact and "*"
		{"fd00:ec2::254", []string{"fd00:ec2::254"}, []string{"fd00:ec2::255"}},
	} {
		p, err := ParseHostPattern(tc.pattern)
		if err != nil {
			t.Fatalf("%q: %v", tc.pattern, err)
		}
		for _, h := range tc.match {
			if !p.Match(h) {
				t.Errorf("%q should match %q", tc.pattern, h)
			}
		}
		for _, h := range tc.miss {
			if p.Match(h) {
				t.Errorf("%q should not match %q", tc.pattern, h)
			}
		}
	}
	for _, bad := range []string{"", "api.*.com", "*api.com", "**.com", "*.", "a.com:443", "*.a..b"} {
		if _, err := ParseHostPattern(bad); err == nil {
			t.Errorf("ParseHostPattern(%q) accepted", bad)
		}
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		glob  string
		match []string
		miss  []string
	}{
		{"/v1/*", []string{"/v1/messages", "/v1/a/b", "/v1/"}, []string{"/v1", "/v2/messages"}},
		{"/v1/messages", []string{"/v1/messages"}, []string{"/v1/messages/x", "/v1/message"}},
		{"/*/git-upload-pack", []string{"/o/r.git/git-upload-pack", "/x/git-upload-pack"}, []string{"/git-upload-pack", "/o/r/git-upload-pack/x"}},
		{"/a*b*c", []string{"/abc", "/aXbYc", "/abbc"}, []string{"/acb", "/ab"}},
		{"/*", []string{"/", "/x/y"}, []string{""}},
	} {
		g := newGlob(tc.glob)
		for _, s := range tc.match {
			if !g.match(s) {
				t.Errorf("%q should match %q", tc.glob, s)
			}
		}
		for _, s := range tc.miss {
			if g.match(s) {
				t.Errorf("%q should not match %q", tc.glob, s)
			}
		}
	}
}

// TestMostSpecificWins pins the documented ordering: host, then path, then method, then file order.
func TestMostSpecificWins(t *testing.T) {
	rs, err := ParseRules("order.toml", []byte(`
[[rules]]
method = "*"
host = "*"
action_class = "web.request"

[[rules]]
method = "DNS"
host = "*"
action_class = "network.dns.resolve"

[[rules]]
host = "*.example.com"
action_class = "communication.external.read"

[[rules]]
host = "*.example.com"
path = "/v1/*"
action_class = "model.inference.chat"

[[rules]]
host = "api.example.com"
action_class = "code.read"

[[rules]]
method = "POST"
host = "api.example.com"
action_class = "code.write"

[[rules]]
host = "api.example.com"
path = "/v1/*"
action_class = "model.inference.embedding"

[[rules]]
method = "POST"
host = "api.example.com"
path = "/v1/*"
action_class = "model.inference.image"

[[rules]]
host = "api.example.com"
path = "/v1/audio/*"
action_class = "model.inference.audio"

[[rules]]
host = "api.example.com"
path = "/v1/files"
action_class = "model.files.upload"

[[rules]]
host = "api.example.com"
path = "/v1/file*"
action_class = "package.install"

[[rules]]
method = "CONNECT"
host = "api.example.com"
path = "/"
action_class = "communication.external.send"

[[rules]]
host = "tie.example.com"
path = "/a*"
action_class = "payment.read"

[[rules]]
host = "tie.example.com"
path = "/*b"
action_class = "payment.charge"
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ method, host, path, want string }{
		{"GET", "api.example.com", "/other", "code.read"},                      // exact host beats wildcard with a path
		{"POST", "api.example.com", "/other", "code.write"},                    // named method beats none
		{"GET", "api.example.com", "/v1/x", "model.inference.embedding"},       // a path beats none
		{"POST", "api.example.com", "/v1/x", "model.inference.image"},          // same path: named method wins
		{"POST", "api.example.com", "/v1/audio/x", "model.inference.audio"},    // longer glob beats a shorter one, even with a method
		{"GET", "api.example.com", "/v1/files", "model.files.upload"},          // exact path beats a glob as long
		{"GET", "api.example.com", "/v1/filesystem", "package.install"},        // glob
		{"CONNECT", "api.example.com", "", "communication.external.send"},      // CONNECT rule, "/" = no path
		{"DNS", "api.example.com", "", "network.dns.resolve"},                  // no DNS rule for the host: falls to "*"
		{"GET", "www.example.com", "/v1/x", "model.inference.chat"},            // wildcard with a path
		{"GET", "www.example.com", "/", "communication.external.read"},         // wildcard
		{"CONNECT", "www.example.com", "", "web.request"},                      // wildcard rules are L7 only; "*" takes CONNECT
		{"GET", "a.b.example.com", "/v1/x", "web.request"},                     // one label only
		{"GET", "tie.example.com", "/ab", "payment.read"},                      // equal rank: first written
		{"get", "API.EXAMPLE.COM.", "/v1//audio/%78", "model.inference.audio"}, // normalized first
		{"GET", "203.0.113.7", "/", "web.request"},
	} {
		r, err := rs.Classify(tc.method, tc.host, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if r == nil || r.ActionClass != tc.want {
			t.Errorf("%s %s%s: got %v, want %s", tc.method, tc.host, tc.path, r, tc.want)
		}
	}
}

func TestUnclassified(t *testing.T) {
	rs, err := ParseRules("r.toml", []byte("[[rules]]\nmethod = \"CONNECT\"\nhost = \"a.com\"\naction_class = \"network.connect\"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range [][3]string{{"GET", "a.com", "/"}, {"DNS", "a.com", ""}, {"CONNECT", "b.com", ""}} {
		if r, _ := rs.Classify(c[0], c[1], c[2]); r != nil {
			t.Errorf("%v classified by %v", c, r)
		}
	}
	if r, _ := rs.Classify("CONNECT", "A.com.", ""); r == nil || r.Line != 1 || r.File != "r.toml" {
		t.Errorf("CONNECT a.com: %v", r)
	}
}

func TestEmbeddedRules(t *testing.T) {
	rs := EmbeddedRules()
	if len(rs.All()) < 100 {
		t.Fatalf("only %d embedded rules", len(rs.All()))
	}
	for _, r := range rs.All() {
		if r.Line == 0 {
			t.Errorf("rule without a line: %v", r)
		}
	}
	if !strings.Contains(string(EmbeddedRulesText()), "The most specific matching rule wins") {
		t.Error("the embedded rules file does not document the ordering")
	}
}

// TestRuleHostPorts: a port in a rule's host must equal the intent's port; ":*" is any port; a rule
// with a port beats one without on the same host.
func TestRuleHostPorts(t *testing.T) {
	rs, err := ParseRules("ports.toml", []byte(`
[[rules]]
method = "*"
host = "localhost:*"
action_class = "web.request"

[[rules]]
method = "*"
host = "127.0.0.1:9100"
action_class = "network.connect"

[[rules]]
method = "CONNECT"
host = "github.com:22"
action_class = "code.write"

[[rules]]
method = "CONNECT"
host = "github.com"
action_class = "communication.external.send"

[[rules]]
host = "[::1]:8080"
path = "*"
action_class = "communication.external.read"

[[rules]]
method = "CONNECT"
host = "*.corp.example:443"
action_class = "code.read"

[[rules]]
method = "CONNECT"
host = "*:5432"
action_class = "cloud.metadata.read"
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ method, host, path, want string }{
		{"CONNECT", "localhost:443", "", "web.request"},
		{"GET", "localhost:8080", "/x", "web.request"},
		{"DNS", "localhost", "", "web.request"},
		{"CONNECT", "127.0.0.1:9100", "", "network.connect"},
		{"CONNECT", "127.0.0.1:9101", "", ""},
		{"CONNECT", "github.com:22", "", "code.write"},                    // the port rule beats the any-port rule
		{"CONNECT", "github.com:443", "", "communication.external.send"},  // any port
		{"GET", "[::1]:8080", "/a/b", "communication.external.read"},      // bracketed IPv6 with a port; path "*"
		{"GET", "[::1]:8081", "/a/b", ""},                                 //
		{"CONNECT", "git.corp.example:443", "", "code.read"},              // wildcard host with a port
		{"CONNECT", "git.corp.example:8443", "", ""},                      //
		{"CONNECT", "db.internal:5432", "", "cloud.metadata.read"},        // any host, one port
		{"CONNECT", "github.com:5432", "", "communication.external.send"}, // an exact host beats "*"
		{"GET", "127.0.0.1:9100", "/metrics", "network.connect"},          // "*" method: every intent
	} {
		checkClass(t, rs, tc.method, tc.host, tc.path, tc.want)
	}
	for _, bad := range []string{"github.com:0", "github.com:65536", "github.com:x", "github.com:", "[::1]:*x", "a.com:22:33"} {
		if _, _, err := parseRuleHost(bad); err == nil {
			t.Errorf("parseRuleHost(%q) accepted", bad)
		}
	}
	// The port is part of a rule's identity: the same host on two ports is not a duplicate, the same
	// host and port twice is.
	dup := "[[rules]]\nmethod = \"CONNECT\"\nhost = \"a.com:22\"\naction_class = \"code.write\"\n"
	if _, err := ParseRules("d.toml", []byte(dup+strings.Replace(dup, ":22", ":443", 1)), nil); err != nil {
		t.Errorf("two ports: %v", err)
	}
	if _, err := ParseRules("d.toml", []byte(dup+dup), nil); err == nil || !strings.Contains(err.Error(), "same method, host, port and path") {
		t.Errorf("duplicate with port: %v", err)
	}
}

// TestRulePathStar: path = "*" (OpenFirma's templates) is every path, the same rule as no path; a
// glob may start with '*'.
func TestRulePathStar(t *testing.T) {
	rs, err := ParseRules("star.toml", []byte(`
[[rules]]
host = "api.example.com"
path = "*"
action_class = "web.request"

[[rules]]
method = "CONNECT"
host = "api.example.com"
path = "*"
action_class = "communication.external.send"

[[rules]]
method = "POST"
host = "git.example.com"
path = "*/git-receive-pack"
action_class = "code.write"
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ method, host, path, want string }{
		{"GET", "api.example.com", "/", "web.request"},
		{"POST", "api.example.com", "/v1/deep/path", "web.request"},
		{"CONNECT", "api.example.com", "", "communication.external.send"},
		{"POST", "git.example.com", "/o/r.git/git-receive-pack", "code.write"},
		{"POST", "git.example.com", "/git-receive-pack", "code.write"},
		{"POST", "git.example.com", "/o/r.git/info/refs", ""},
	} {
		checkClass(t, rs, tc.method, tc.host, tc.path, tc.want)
	}
	same := "[[rules]]\nhost = \"a.com\"\naction_class = \"web.request\"\n"
	if _, err := ParseRules("s.toml", []byte(same+strings.Replace(same, "host", "path = \"*\"\nhost", 1)), nil); err == nil {
		t.Error(`path = "*" and no path loaded as two rules`)
	}
	for _, bad := range []string{"v1/*", "*//x", "*/../x"} {
		if _, err := ParseRules("b.toml", []byte("[[rules]]\nhost = \"a.com\"\npath = \""+bad+"\"\naction_class = \"web.request\"\n"), nil); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

// checkClass asserts the action class rs gives an intent ("" for none).
func checkClass(t *testing.T, rs *Rules, method, host, path, want string) {
	t.Helper()
	r, err := rs.Classify(method, host, path)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	got := ""
	if r != nil {
		got = r.ActionClass
	}
	if got != want {
		t.Errorf("%s %s%s: got %q (%v), want %q", method, host, path, got, r, want)
	}
}
