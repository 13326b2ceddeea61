package runner_test

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/openfirma/firma/internal/testutil"
)

// TestRunCtrlCAtATerminal: a ^C typed at the terminal reaches the agent once (the kernel sends it
// to the whole foreground process group: firma run, init and agent), and neither firma run nor
// init turns it into a second signal or an end of their own.
//
// firma run is started directly as the session leader of a new pty (no shell in between: a shell
// waiting on firma run would get the ^C too and, depending on timing, die of it), so the status
// checked is firma run's own.
func TestRunCtrlCAtATerminal(t *testing.T) {
	f := newFakeSidecar(t)
	agent := `n=0; trap 'n=$((n+1)); echo "interrupted $n"' INT; echo ready; while [ $n -lt 1 ]; do sleep 0.05; done; sleep 0.5; echo "bye after $n"; exit 5`
	cmd := f.command(t, "/", nil, "--", "sh", "-c", agent)
	term, err := pty.Start(cmd) // Setsid + Setctty: firma run's group is the terminal's foreground
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	var out testutil.SyncBuffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&out, term) // ends with EIO once every holder of the pty's other side has exited
		close(copied)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("agent never got ready:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := io.WriteString(term, "\x03"); err != nil { // the terminal's ^C
		t.Fatal(err)
	}
	err = cmd.Wait()
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
	}
	if got := cmd.ProcessState.ExitCode(); got != 5 || !strings.Contains(out.String(), "bye after 1") {
		t.Fatalf("exit %d (%v), want 5 after exactly one interrupt:\n%s", got, err, out.String())
	}
	f.noCgroupLeft(t)
}
