package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestThreatModelUnitSettings fails when docs/threat-model.md names a systemd setting
// (`Name=value`) that the example agent unit does not have: the page tells operators the example
// unit closes what BPF LSM would, so each setting it names must be there. A value may be
// abbreviated with "…": each word of it must appear in the unit's lines for that setting; an empty
// value (`RestrictAddressFamilies=`) names the setting only.
func TestThreatModelUnitSettings(t *testing.T) {
	root := repoRoot(t)
	page, err := os.ReadFile(filepath.Join(root, "docs/threat-model.md"))
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "examples/systemd/claude-code-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string][]string{} // name → the values of every line setting it
	for _, line := range strings.Split(string(unit), "\n") {
		if name, value, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			settings[name] = append(settings[name], value)
		}
	}
	named := regexp.MustCompile("`([A-Z][A-Za-z]+)=([^`]*)`").FindAllStringSubmatch(string(page), -1)
	if len(named) < 8 {
		t.Fatalf("found only %d unit settings in threat-model.md: the scan is broken", len(named))
	}
	for _, m := range named {
		name, want := m[1], m[2]
		values, ok := settings[name]
		if !ok {
			t.Errorf("threat-model.md names %s=, which the example unit does not set", name)
			continue
		}
		fields := map[string]bool{}
		for _, v := range values {
			for _, f := range strings.Fields(v) {
				fields[f] = true
			}
		}
		for _, word := range strings.Fields(strings.ReplaceAll(want, "…", " ")) {
			if !fields[word] {
				t.Errorf("threat-model.md says %s=%s; the example unit's %s= lines %q lack %q", name, want, name, values, word)
			}
		}
	}
}
