// Package archtest holds the test that keeps firma's one-way import rules (docs/architecture.md):
// which package may depend on which. It has no code of its own.
package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/openfirma/firma"

// pkg is what `go list -json` says of one package.
type pkg struct {
	ImportPath string
	Imports    []string // direct imports of the package's non-test files
	Deps       []string // every package it depends on, transitively
}

func listPackages(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", mod+"/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[strings.TrimPrefix(p.ImportPath, mod+"/")] = p
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages; expected the whole module", len(pkgs))
	}
	return pkgs
}

// within reports whether import path p (module-relative or absolute) is dir or below it.
func within(p, dir string) bool {
	p = strings.TrimPrefix(p, mod+"/")
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// TestImportRules checks the one-way rules between firma's rooms. Each rule names a package (and
// everything below it unless exact) and what it must not depend on, directly or not.
func TestImportRules(t *testing.T) {
	pkgs := listPackages(t)
	rules := []struct {
		pkg    string
		direct bool     // only direct imports count (a room may reach audit through the judge)
		banned []string // module-relative dirs it must not depend on
		why    string
	}{
		{"authority", false, []string{"daemon", "bpf", "runner"}, "the trust root depends on no sidecar code"},
		{"policies", false, []string{"daemon", "bpf", "authority", "runner"}, "the policy layer only reads policy"},
		{"bpf", false, []string{"daemon", "policies", "authority", "runner"}, "the kernel half knows nothing about policy"},
		{"runner", false, []string{"bpf", "policies", "daemon/judge", "daemon/front", "daemon/l7", "daemon/dns", "daemon/agents", "daemon/audit"}, "firma run only places and registers"},
		{"daemon/connector", true, []string{"daemon/judge", "daemon/front", "daemon/l7", "daemon/dns", "daemon/agents", "policies", "bpf", "authority"}, "the connector resolves and dials, nothing else"},
		{"daemon/judge", true, []string{"daemon/front", "daemon/l7", "daemon/dns", "daemon/agents", "daemon/connector", "daemon/control", "bpf"}, "the judge does no I/O but audit and policy"},
		{"daemon/front", true, []string{"daemon/connector", "daemon/dns", "daemon/agents", "daemon/audit", "daemon/control", "authority"}, "front routes; it neither dials nor decides"},
		{"daemon/l7", true, []string{"daemon/connector", "daemon/front", "daemon/dns", "daemon/agents", "daemon/audit", "daemon/control", "bpf", "authority"}, "the HTTP engine dials only through the function it is given"},
		{"daemon/dns", true, []string{"daemon/connector", "daemon/front", "daemon/l7", "daemon/agents", "daemon/audit", "daemon/control", "authority"}, "the resolver takes what it needs"},
		{"daemon/agents", true, []string{"daemon/front", "daemon/l7", "daemon/dns", "daemon/judge", "daemon/connector", "daemon/audit", "bpf"}, "identities only"},
		{"daemon/audit", true, []string{"daemon/judge", "daemon/front", "daemon/l7", "daemon/dns", "daemon/agents", "daemon/connector", "daemon/control", "policies", "bpf", "authority"}, "the audit log is a leaf"},
		{"daemon/control", true, []string{"daemon/judge", "daemon/front", "daemon/l7", "daemon/dns", "daemon/agents", "daemon/connector", "daemon/audit", "policies", "bpf", "authority"}, "the control socket decides nothing"},
		{"daemon/metrics", true, []string{"daemon/judge", "daemon/front", "daemon/l7", "daemon/dns", "daemon/agents", "daemon/connector", "daemon/control", "daemon/credentials", "bpf", "authority"}, "metrics count what they are told and read what they are given"},
		{"cmd/firma", false, []string{"examples"}, "the binary does not ship examples"},
	}
	for _, r := range rules {
		found := false
		for name, p := range pkgs {
			if !within(name, r.pkg) {
				continue
			}
			found = true
			deps := p.Deps
			if r.direct {
				deps = p.Imports
			}
			for _, dep := range deps {
				for _, b := range r.banned {
					if within(dep, b) && strings.HasPrefix(dep, mod+"/") {
						t.Errorf("%s depends on %s: %s", name, strings.TrimPrefix(dep, mod+"/"), r.why)
					}
				}
			}
		}
		if !found {
			t.Errorf("rule for %s matches no package", r.pkg)
		}
	}
	// No package below daemon/ imports the daemon root: the rooms do not reach back into the
	// lifecycle that composes them.
	for name, p := range pkgs {
		if !within(name, "daemon") || name == "daemon" {
			continue
		}
		for _, dep := range p.Deps {
			if dep == mod+"/daemon" {
				t.Errorf("%s depends on the daemon root", name)
			}
		}
	}
	// internal/ is imported by product code only for its leaf packages, never for test helpers.
	for name, p := range pkgs {
		if within(name, "internal") {
			continue
		}
		for _, imp := range p.Imports {
			for _, testOnly := range []string{"internal/testutil", "internal/e2e"} {
				if within(imp, testOnly) && strings.HasPrefix(imp, mod+"/") {
					t.Errorf("%s imports the test helpers %s", name, strings.TrimPrefix(imp, mod+"/"))
				}
			}
		}
	}
}
