//go:build linux

package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

// The README's first command must keep showing what it says it shows.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	var out bytes.Buffer
	if err := Run(context.Background(), &out, false); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"hello from api.anthropic.com /v1/messages",
		"Could not resolve host: paste.rs",
		"alert access denied",
		"firma: denied: unclassified intent",
		"api.anthropic.com  1 connection(s)",
		"paste.rs           0 connection(s)",
		"example.com        0 connection(s)",
		"ALLOW connect api.anthropic.com:443",
		"DENY  connect paste.rs:443",
		"forbid_at_claude-code.cedar_18",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
}
