package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runPolicy(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"policy"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestPolicyValidate(t *testing.T) {
	code, out, errs := runPolicy(t, "validate")
	if code != 0 || !strings.Contains(out, "ok  (embedded policies): 6 policies") || !strings.Contains(out, "ok  (embedded rules):") {
		t.Errorf("embedded: %d\n%s%s", code, out, errs)
	}
	code, out, errs = runPolicy(t, "validate", "-v", "../../examples/policies",
		"../../examples/firma-run/local/assets/mapping-rules.claude.local.example.toml")
	if code != 0 || !strings.Contains(out, "forbid_at_claude-code.cedar_18") || !strings.Contains(out, "13 mapping rules") {
		t.Errorf("guide files: %d\n%s%s", code, out, errs)
	}
	code, _, errs = runPolicy(t, "validate", "../../policies/testdata/invalid/policies/unknown-attribute.cedar",
		"../../policies/testdata/invalid/rules/unknown-action.toml")
	if code != 1 ||
		!strings.Contains(errs, "unknown-attribute.cedar:4:1: policy permit_at_unknown-attribute.cedar_4: attribute `hots`") ||
		!strings.Contains(errs, `unknown-action.toml:4: rules[0]: unknown action class "model.inference.chats"`) {
		t.Errorf("invalid files: %d\n%s", code, errs)
	}
	if code, _, _ := runPolicy(t, "validate", "no-such-dir"); code != 1 {
		t.Errorf("missing dir: exit %d", code)
	}
}

func TestPolicyTest(t *testing.T) {
	fixtures, _ := filepath.Glob("../../policies/testdata/*.toml")
	code, out, errs := runPolicy(t, append([]string{"test"}, fixtures...)...)
	if code != 0 || !strings.Contains(out, " 0 failed") {
		t.Errorf("golden fixtures: %d\n%s%s", code, out, errs)
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(`
[[case]]
name = "expects the wrong thing"
principal = "claude-code"
method = "CONNECT"
host = "paste.rs"
expect = "ALLOW"
expect_policies = []
`), 0o644)
	code, out, _ = runPolicy(t, "test", bad)
	for _, w := range []string{"FAIL ", "bad.toml:2: expects the wrong thing: outcome DENY, want ALLOW",
		"forbid_at_claude-code.cedar_18", "1 cases, 1 failed"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if code != 1 {
		t.Errorf("mismatch: exit %d, want 1", code)
	}
	// Flags override the fixture's setup: with passthrough, an unclassified intent passes.
	os.WriteFile(bad, []byte(`
[[case]]
principal = "a"
method = "GET"
host = "example.com"
expect = "PASSTHROUGH"
`), 0o644)
	if code, out, errs := runPolicy(t, "test", "--default-protected=false", bad); code != 0 {
		t.Errorf("--default-protected=false: %d\n%s%s", code, out, errs)
	}
	if code, _, _ := runPolicy(t, "test", "--default-protected=maybe", bad); code != 2 {
		t.Errorf("bad flag value: exit %d, want 2", code)
	}
	if code, _, _ := runPolicy(t, "test"); code != 2 {
		t.Errorf("no fixtures: exit %d, want 2", code)
	}
	if code, _, _ := runPolicy(t, "frobnicate"); code != 2 {
		t.Errorf("unknown subcommand: exit %d, want 2", code)
	}
}

func TestPolicySchema(t *testing.T) {
	code, out, errs := runPolicy(t, "schema")
	if code != 0 || !strings.Contains(out, "namespace Firma {") || !strings.Contains(out, "entity Json {") ||
		!strings.Contains(out, `action "code.destructive"`) {
		t.Errorf("schema: %d\n%s%s", code, out, errs)
	}
	if code, _, _ := runPolicy(t, "schema", "extra"); code != 2 {
		t.Errorf("schema with an argument: exit %d, want 2", code)
	}
}
