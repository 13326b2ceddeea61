//go:build linux

package daemon_test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// firma runs the firma binary with args and returns its exit code and output.
func firma(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(e2e.Binary(t, "firma"), args...)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	return exitCode(err), string(out)
}

// A second sidecar with the same config exits 1 naming the first one's pid, and writes nothing:
// the live audit log keeps its chain.
func TestSecondSidecarRefusedBeforeWriting(t *testing.T) {
	key, pub := e2e.AuditKey(t)
	w := newWorld(t, e2e.SidecarOptions{AuditTOML: auditTOML(key)})
	if out, err := w.curl(t, "https://allowed.test/before"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	// The tunnel's completion record is written once the sidecar sees both sides end, which can be
	// after curl has exited: wait for it, so that nothing the first sidecar writes comes later.
	completionFor(t, w.Sidecar, "allowed.test")
	before, _ := os.ReadFile(w.AuditPath)

	code, out := firma(t, "sidecar", "-c", w.ConfigPath)
	if code != 1 || !strings.Contains(out, "pid "+strconv.Itoa(w.PID())) || !strings.Contains(out, "another firma sidecar") {
		t.Fatalf("second sidecar: exit %d:\n%s", code, out)
	}
	after, _ := os.ReadFile(w.AuditPath)
	if string(after) != string(before) {
		t.Fatalf("the second sidecar wrote into the live audit log:\n%s", after[len(before):])
	}
	if out, err := w.curl(t, "https://allowed.test/after"); err != nil {
		t.Fatalf("the first sidecar stopped serving: %v %s", err, out)
	}
	w.Stop(t)
	if out, code := e2e.VerifyAudit(t, pub, w.AuditFiles(t)...); code != 0 {
		t.Fatalf("audit verify: %s", out)
	}
}

// --cleanup refuses while a sidecar runs and enforcement stays; --cleanup --force warns, the
// sidecar notices the detached programs, reports it, re-attaches, and firma run is refused
// meanwhile; enforcement is back afterwards.
func TestCleanupUnderARunningSidecar(t *testing.T) {
	w := newWorld(t, e2e.SidecarOptions{})
	code, out := firma(t, "sidecar", "-c", w.ConfigPath, "--cleanup")
	if code != 1 || !strings.Contains(out, "cleanup refused") || !strings.Contains(out, "pid "+strconv.Itoa(w.PID())) {
		t.Fatalf("cleanup under a running sidecar: exit %d:\n%s", code, out)
	}
	if out, err := w.curl(t, "--resolve", "denied.test:443:"+w.denied.Addr.Addr().String(), "https://denied.test/"); err == nil {
		t.Fatalf("enforcement ended after a refused cleanup: %q", out)
	}
	if w.denied.Conns() != 0 {
		t.Fatal("the denied upstream was reached")
	}

	code, out = firma(t, "sidecar", "-c", w.ConfigPath, "--cleanup", "--force")
	if code != 0 || !strings.Contains(out, "WARNING") {
		t.Fatalf("cleanup --force: exit %d:\n%s", code, out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(w.Logs(), "kernel programs repaired") {
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar did not repair its programs:\n%s", w.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(w.Logs(), "kernel programs not in force") {
		t.Fatalf("the detachment was not reported as an error:\n%s", w.Logs())
	}
	if out, err := w.curl(t, "--resolve", "denied.test:443:"+w.denied.Addr.Addr().String(), "https://denied.test/"); err == nil {
		t.Fatalf("enforcement not back after the repair: %q", out)
	}
	if out, err := w.curl(t, "https://allowed.test/back"); err != nil {
		t.Fatalf("allowed traffic after the repair: %v %s", err, out)
	}
	if w.denied.Conns() != 0 {
		t.Fatal("the denied upstream was reached")
	}
}
