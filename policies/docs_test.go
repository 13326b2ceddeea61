package policies

import (
	"os"
	"strings"
	"testing"
)

// TestDocsExamples: every ```cedar block of docs/policies.md is a policy set that loads under the
// embedded schema, and every context attribute the schema declares has an example there.
func TestDocsExamples(t *testing.T) {
	doc, err := os.ReadFile("../docs/policies.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	rest := string(doc)
	for {
		_, after, ok := strings.Cut(rest, "```cedar\n")
		if !ok {
			break
		}
		block, tail, ok := strings.Cut(after, "```")
		if !ok {
			t.Fatal("unterminated cedar block")
		}
		rest = tail
		blocks++
		if _, err := ParseFiles(map[string][]byte{"example.cedar": []byte(block)}, EmbeddedSchema()); err != nil {
			t.Errorf("docs/policies.md example %d:\n%s\n%v", blocks, block, err)
		}
	}
	if blocks < 20 {
		t.Fatalf("%d cedar blocks", blocks)
	}
	for _, a := range contextAttrs {
		switch a.name {
		case "session_id", "timestamp_ms", "raw_transport", "pid", "exe", "uid", "cgroup":
			continue // attribution: documented in the schema
		}
		if !strings.Contains(string(doc), "context."+a.name) {
			t.Errorf("docs/policies.md has no example reading context.%s", a.name)
		}
	}
}
