package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// RequireRoot skips tb unless it runs as root. CI runs as root, so there every privileged test runs;
// FIRMA_REQUIRE_ROOT=1 (set by .ci/run) turns the skip into a failure.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FIRMA_REQUIRE_ROOT") != "" {
		tb.Fatal("test needs root and FIRMA_REQUIRE_ROOT is set")
	}
	tb.Skip("test needs root")
}

// RequireTool returns the path of an external program a test drives (curl, node, openssl,
// systemd-analyze), skipping without it — and failing when FIRMA_REQUIRE_ROOT is set, as CI sets
// it, so that a missing install step cannot pass as a skip.
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("FIRMA_REQUIRE_ROOT") != "" {
		tb.Fatalf("test needs %s (FIRMA_REQUIRE_ROOT is set): %v", name, err)
	}
	tb.Skipf("%s not installed", name)
	return ""
}
