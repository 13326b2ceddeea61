//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

// Attempt is one line of internal/e2e/cmd/escape's output: what one technique came to.
type Attempt struct {
	Technique string   `json:"technique"`
	PID       int      `json:"pid"`
	UID       int      `json:"uid"`
	Ops       []string `json:"ops"`    // the syscalls that succeeded, in order
	Failed    string   `json:"failed"` // the syscall that failed
	Errno     string   `json:"errno"`  // its errno (EPERM, …, or TIMEOUT)
	Cookies   []uint64 `json:"cookies"`
	Accepted  int      `json:"accepted"`
	Peer      string   `json:"peer"`
	Note      string   `json:"note"`
}

func (a Attempt) String() string {
	if a.Failed == "" {
		return fmt.Sprintf("%s: ok %v %s", a.Technique, a.Ops, a.Note)
	}
	return fmt.Sprintf("%s: %s → %s after %v %s", a.Technique, a.Failed, a.Errno, a.Ops, a.Note)
}

// EscapeBinary builds internal/e2e/cmd/escape, the attacker, once per test binary.
func EscapeBinary(tb testing.TB) string {
	tb.Helper()
	p, err := testutil.BuildGo("github.com/openfirma/firma/internal/e2e/cmd/escape")
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// RunEscape runs the attacker cmd (prepared by the caller: namespace, cgroup, arguments) and
// returns its lines by technique, and its pid.
func RunEscape(tb testing.TB, cmd *exec.Cmd) (map[string]Attempt, int) {
	tb.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("escape: %v\n%s\n%s", err, out, stderr.String())
	}
	got := map[string]Attempt{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var a Attempt
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			tb.Fatalf("escape line %q: %v", line, err)
		}
		got[a.Technique] = a
	}
	return got, cmd.Process.Pid
}
