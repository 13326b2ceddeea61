package authority

import (
	"os/exec"
	"strings"
	"testing"
)

// The authority is the trust root: it must not depend on the sidecar or the BPF loader.
func TestNoDaemonOrBPFImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/openfirma/firma/authority").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps printed %d packages; expected the whole closure:\n%s", len(deps), out)
	}
	for _, dep := range deps {
		for _, banned := range []string{"github.com/openfirma/firma/daemon", "github.com/openfirma/firma/bpf"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("authority depends on %s", dep)
			}
		}
	}
}
