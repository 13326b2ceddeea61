package runner_test

import (
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
)

// TestRunCtrlCAtATerminal: a ^C typed at the terminal reaches the agent once (the kernel sends it
// to the whole foreground process group: firma run, init and agent), and neither firma run nor
// init turns it into a second signal or an end of their own.
func TestRunCtrlCAtATerminal(t *testing.T) {
	testutil.RequireTool(t, "script")
	f := newFakeSidecar(t)
	agent := `n=0; trap 'n=$((n+1)); echo "interrupted $n"' INT; echo ready; while [ $n -lt 1 ]; do sleep 0.05; done; sleep 0.5; echo "bye after $n"; exit 5`
	cmd := f.command(t, "/", nil, "--", "sh", "-c", agent)
	// script(1) runs firma run on a new pty whose input is our pipe: a 0x03 written there is the
	// terminal's ^C.
	sc := exec.Command("script", "-qefc", strings.Join(quoteAll(cmd.Args), " "), "/dev/null")
	sc.Env = cmd.Env
	in, err := sc.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out testutil.SyncBuffer
	sc.Stdout, sc.Stderr = &out, &out
	if err := sc.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		if time.Now().After(deadline) {
			sc.Process.Kill()
			t.Fatalf("agent never got ready:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	io.WriteString(in, "\x03")
	err = sc.Wait()
	in.Close()
	if got := sc.ProcessState.ExitCode(); got != 5 || !strings.Contains(out.String(), "bye after 1") {
		t.Fatalf("exit %d (%v), want 5 after exactly one interrupt:\n%s", got, err, out.String())
	}
	f.noCgroupLeft(t)
}

func quoteAll(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return q
}
