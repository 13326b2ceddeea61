package policies

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
)

func ids(s *Set) []string {
	var out []string
	for _, p := range s.Policies() {
		out = append(out, p.ID)
	}
	return out
}

func TestPolicyIDs(t *testing.T) {
	set, err := ParseFiles(map[string][]byte{
		"bundle/a.cedar": []byte(`// comment
permit (principal, action == Firma::Action::"web.request", resource);

@doc("annotations are skipped: the id names the keyword's line")
@other("x")   // a comment between
forbid (principal, action, resource) when { resource.host == "x" };
@id("named") permit (principal, action, resource);
permit (principal, action, resource); forbid (principal, action, resource) when { false };
`),
		"b.cedar": []byte(`permit (principal == Firma::Agent::"a", action, resource);`),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"permit_at_b.cedar_1", "permit_at_a.cedar_2", "forbid_at_a.cedar_6", "named", "permit_at_a.cedar_8", "forbid_at_a.cedar_8"}
	if got := ids(set); !slices.Equal(got, want) {
		t.Errorf("ids %v, want %v", got, want)
	}
	info := set.Policies()[2]
	if info.File != "bundle/a.cedar" || info.Line != 6 || info.Column != 1 || info.Effect != "forbid" {
		t.Errorf("policy info %+v", info)
	}
}

func TestGuidePolicyIDs(t *testing.T) {
	set, err := LoadDir("../examples/policies", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(set), []string{"permit_at_claude-code.cedar_7", "forbid_at_claude-code.cedar_18"}; !slices.Equal(got, want) {
		t.Errorf("ids %v, want %v", got, want)
	}
}

// The example the guide has users create and the embedded copy must be the same file.
func TestGuidePolicyIsEmbedded(t *testing.T) {
	example, err := os.ReadFile("../examples/policies/claude-code.cedar")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(example, EmbeddedPolicyFiles()["claude-code.cedar"]) {
		t.Error("examples/policies/claude-code.cedar and policies/default/claude-code.cedar differ")
	}
	if !slices.Contains(ids(EmbeddedSet()), "forbid_at_claude-code.cedar_18") {
		t.Errorf("embedded set lacks the guide's forbid: %v", ids(EmbeddedSet()))
	}
}

func TestDuplicateIDAcrossFiles(t *testing.T) {
	_, err := ParseFiles(map[string][]byte{
		"a.cedar":     []byte(`@id("p") permit (principal, action, resource);`),
		"b.cedar":     []byte("\n\n@id(\"p\")\nforbid (principal, action, resource);"),
		"c.cedar":     []byte(`permit (principal, action, resource); permit (principal, action, resource);`),
		"sub/c.cedar": []byte(`forbid (principal, action, resource);`),
	}, nil)
	for _, w := range []string{
		`b.cedar:4:1: duplicate policy id "p" (first at a.cedar:1:10)`,
		`c.cedar:1:39: duplicate policy id "permit_at_c.cedar_1" (first at c.cedar:1:1; give them @id annotations)`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("want %q in %v", w, err)
		}
	}
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("not ErrInvalidPolicy: %v", err)
	}
}

func TestSyntaxErrorPosition(t *testing.T) {
	_, err := ParseFiles(map[string][]byte{"s.cedar": []byte("permit (principal, action, resource)\nwhen { resource.host == \"abc };\n")}, nil)
	var le *LoadError
	if !errors.As(err, &le) || len(le.Problems) != 1 {
		t.Fatalf("want one problem, got %v", err)
	}
	if p := le.Problems[0]; p.File != "s.cedar" || p.Line != 2 || p.Column == 0 {
		t.Errorf("problem %+v lacks a position", p)
	}
	if _, err := ParseFiles(map[string][]byte{"x.txt": nil}, nil); err == nil || !strings.Contains(err.Error(), "x.txt: not a .cedar file") {
		t.Errorf("non-.cedar bundle file: %v", err)
	}
}

func TestEmptyDirLoads(t *testing.T) {
	set, err := LoadDir(t.TempDir(), nil)
	if err != nil || set.Len() != 0 {
		t.Fatalf("empty dir: %v, %d policies", err, set.Len())
	}
	v, _ := set.Evaluate(Query{AgentID: "a", ActionClass: "web.request", Resource: "x/"})
	if v.Allowed {
		t.Error("an empty set allowed a request")
	}
	if _, err := LoadDir("testdata/no-such-dir", nil); err == nil || !strings.Contains(err.Error(), "loading policy dir testdata/no-such-dir") {
		t.Errorf("missing dir: %v", err)
	}
}

func TestEmbeddedRegistry(t *testing.T) {
	s := EmbeddedSchema()
	for _, class := range []string{
		"communication.external.send", "model.inference.chat", "network.connect", "network.dns.resolve",
		"code.read", "package.install", "payment.charge", "messaging.message.send", "cloud.metadata.read",
	} {
		if !s.HasActionClass(class) {
			t.Errorf("embedded schema lacks %q", class)
		}
	}
	if s.HasActionClass("model") {
		t.Error("the group \"model\" must not be a concrete action class")
	}
}

// TestUserSchemaReplaces: a user schema adds classes; policies and rules load against it and not
// against the embedded one.
func TestUserSchemaReplaces(t *testing.T) {
	text := strings.Replace(string(embeddedSchemaText), "namespace Firma {", `namespace Firma {
    action "tickets.create" appliesTo { principal: Agent, resource: Resource, context: Context };`, 1)
	s, err := ParseSchema("mine.cedarschema", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	policy := map[string][]byte{"t.cedar": []byte(`permit (principal, action == Firma::Action::"tickets.create", resource);`)}
	if _, err := ParseFiles(policy, s); err != nil {
		t.Errorf("under the user schema: %v", err)
	}
	if _, err := ParseFiles(policy, nil); err == nil {
		t.Error("under the embedded schema the unknown action loaded")
	}
	rules := []byte("[[rules]]\nhost = \"jira.example.com\"\naction_class = \"tickets.create\"\n")
	if _, err := ParseRules("r.toml", rules, s); err != nil {
		t.Errorf("rules under the user schema: %v", err)
	}
	if _, err := ParseRules("r.toml", rules, nil); err == nil {
		t.Error("rules with an unknown class loaded under the embedded schema")
	}
}

func TestEvaluate(t *testing.T) {
	set, err := ParseFiles(map[string][]byte{"issuance.cedar": []byte(`
permit (
    principal == Firma::Agent::"claude-code",
    action == Firma::Action::"communication.external.send",
    resource
);
@id("no-wide-scope")
forbid (principal, action, resource) when { resource.host == "*" };
`)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	attrs := func(host string) map[string]any {
		return map[string]any{"host": host, "path": "*", "method": "", "port": int64(0)}
	}
	ctx := map[string]any{"session_id": "s", "timestamp_ms": int64(1)}
	for _, tc := range []struct {
		q        Query
		allowed  bool
		policies []string
		errs     int
	}{
		{Query{AgentID: "claude-code", ActionClass: "communication.external.send", Resource: "*.anthropic.com*", Attributes: attrs("*.anthropic.com"), Context: ctx},
			true, []string{"permit_at_issuance.cedar_2"}, 0},
		{Query{AgentID: "claude-code", ActionClass: "communication.external.send", Resource: "*", Attributes: attrs("*"), Context: ctx},
			false, []string{"no-wide-scope"}, 0},
		{Query{AgentID: "other", ActionClass: "communication.external.send", Resource: "x", Attributes: attrs("x"), Context: ctx},
			false, nil, 0},
		// No attributes: the forbid cannot be evaluated, and a forbid that errors denies.
		{Query{AgentID: "claude-code", ActionClass: "communication.external.send", Resource: "x"},
			false, []string{"no-wide-scope"}, 1},
	} {
		v, err := set.Evaluate(tc.q)
		if err != nil {
			t.Fatal(err)
		}
		if v.Allowed != tc.allowed || !slices.Equal(v.Policies, tc.policies) || len(v.Errors) != tc.errs {
			t.Errorf("%+v: got %+v, want allowed=%v policies=%v errors=%d", tc.q, v, tc.allowed, tc.policies, tc.errs)
		}
	}
	if _, err := set.Evaluate(Query{Context: map[string]any{"x": 1.5}}); err == nil {
		t.Error("a float context value was accepted")
	}
}

// TestIndexMatchesFullEvaluation: the index only skips policies that cannot apply. For a set with
// every kind of scope, indexed evaluation must give exactly what Cedar gives on the whole set.
func TestIndexMatchesFullEvaluation(t *testing.T) {
	principals := []string{
		`principal`, `principal == Firma::Agent::"a"`, `principal == Firma::Agent::"b"`,
		`principal in Firma::Agent::"a"`, `principal is Firma::Agent`,
	}
	actions := []string{
		`action`, `action == Firma::Action::"model.inference.chat"`, `action in Firma::Action::"model"`,
		`action in Firma::Action::"model.inference"`, `action in [Firma::Action::"code.read", Firma::Action::"network"]`,
		`action == Firma::Action::"web.request"`,
	}
	conds := []string{``, `when { resource.host like "*.example.com" }`, `unless { context.uid == 0 }`}
	var b strings.Builder
	n := 0
	for _, p := range principals {
		for _, a := range actions {
			for i, c := range conds {
				effect := "permit"
				if (n+i)%3 == 0 {
					effect = "forbid"
				}
				fmt.Fprintf(&b, "%s (%s, %s, resource) %s;\n", effect, p, a, c)
				n++
			}
		}
	}
	set, err := ParseFiles(map[string][]byte{"all.cedar": []byte(b.String())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	full := cedarSet(set.policies...)
	classes := append(EmbeddedSchema().ActionClasses(), "model", "network")
	checked := 0
	for _, agent := range []string{"a", "b", "c"} {
		for _, class := range classes {
			for _, host := range []string{"api.example.com", "example.org"} {
				for _, uid := range []int{0, 1000} {
					nr := normalized{agent: agent, method: "GET", host: host, path: "/", resource: host + "/", uid: uid, port: 443}
					ents := &requestEntities{resource: resourceEntity(&nr, ""), actions: set.schema.actions}
					req := types.Request{
						Principal: types.NewEntityUID(AgentType, types.String(agent)),
						Action:    types.NewEntityUID(ActionType, types.String(class)),
						Resource:  ents.resource.UID,
						Context:   testContext(&nr),
					}
					got := set.authorize(agent, class, ents, req)
					dec, diag := cedar.Authorize(full, ents, req)
					var want []string
					for _, r := range diag.Reasons {
						want = append(want, string(r.PolicyID))
					}
					sort.Strings(want)
					if got.allowed != (dec == cedar.Allow) || !slices.Equal(got.policies, want) {
						t.Errorf("%s %s %s uid=%d: indexed %v %v, full %v %v", agent, class, host, uid, got.allowed, got.policies, dec, want)
					}
					checked++
				}
			}
		}
	}
	if checked < 100 {
		t.Fatalf("checked only %d requests", checked)
	}
	// The index must actually narrow: agent "c" asking for web.request needs few candidates.
	c := set.candidates("c", "web.request")
	total := 0
	for _, l := range c {
		total += len(l)
	}
	if total >= set.Len()/2 {
		t.Errorf("index kept %d of %d policies for one agent and class", total, set.Len())
	}
}

// cedarSet is a plain Cedar policy set of ps, for comparing firma's evaluation with Cedar's.
func cedarSet(ps ...*policy) *cedar.PolicySet {
	set := cedar.NewPolicySet()
	for _, p := range ps {
		set.Add(cedar.PolicyID(p.id), p.cedar)
	}
	return set
}
