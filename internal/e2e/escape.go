//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/openfirma/firma/internal/cgroup"
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

// EscapeBinary builds internal/e2e/cmd/escape, the attacker, once per test binary, in a directory
// every user may enter.
func EscapeBinary(tb testing.TB) string {
	tb.Helper()
	p, err := testutil.BuildGo("github.com/openfirma/firma/internal/e2e/cmd/escape")
	if err != nil {
		tb.Fatal(err)
	}
	// `firma run --user` execs it as that user.
	if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
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

// RunEscapeHeld runs the attacker with -hold (cmd prepared by the caller, start starts it: in a
// network namespace, say) in a PID namespace of its own, as `firma run` gives it. It finds the
// attacker's pid as the kernel — and so the audit log — knows it, a process named escape below the
// cgroup under, before letting it go. It returns the lines by technique, the attacker's pid in its
// own namespace (what the lines say) and in the kernel's view.
func RunEscapeHeld(tb testing.TB, cmd *exec.Cmd, start func() error, under string) (got map[string]Attempt, nsPID, hostPID int) {
	tb.Helper()
	p := testutil.StartPiped(tb, cmd, start)
	var held struct{ Hold int }
	if line := p.Line(); json.Unmarshal([]byte(line), &held) != nil || held.Hold == 0 {
		tb.Fatalf("escape did not hold: %q\n%s", line, p.Stderr.String())
	}
	hostPID = HostPID(tb, "escape", held.Hold, under)
	if _, err := io.WriteString(p.Stdin, "go\n"); err != nil {
		tb.Fatal(err)
	}
	p.Stdin.Close()
	got = map[string]Attempt{}
	for p.Lines.Scan() {
		var a Attempt
		if err := json.Unmarshal(p.Lines.Bytes(), &a); err != nil {
			tb.Fatalf("escape line %q: %v", p.Lines.Text(), err)
		}
		got[a.Technique] = a
	}
	if err := cmd.Wait(); err != nil {
		tb.Fatalf("escape: %v\n%s", err, p.Stderr.String())
	}
	return got, held.Hold, hostPID
}

// HostPID returns the pid, as this process sees it, of the process named comm below the cgroup
// under whose pid in its own PID namespace is nsPID.
func HostPID(tb testing.TB, comm string, nsPID int, under string) int {
	tb.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, status := range dirs {
		b, err := os.ReadFile(status)
		if err != nil {
			continue
		}
		var name string
		var nspid []string
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Name:"); ok {
				name = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
				nspid = strings.Fields(v)
			}
		}
		if name != comm || len(nspid) < 2 || nspid[len(nspid)-1] != strconv.Itoa(nsPID) {
			continue
		}
		pid, _ := strconv.Atoi(nspid[0])
		if cg, err := cgroup.OfProcess(int32(pid)); err == nil && cgroup.Under(cg, under) {
			return pid
		}
	}
	tb.Fatalf("no process %s with pid %d in its namespace below %s", comm, nsPID, under)
	return 0
}
