package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips tb unless it runs as root. CI runs as root, so there every privileged test runs;
// set FIRMA_REQUIRE_ROOT=1 to turn the skip into a failure.
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
