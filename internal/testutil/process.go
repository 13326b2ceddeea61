package testutil

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Piped is a started command that the test talks to: it writes Stdin and reads Lines of stdout;
// Stderr keeps what the command says there, for failure messages.
type Piped struct {
	Cmd    *exec.Cmd
	Stdin  io.WriteCloser
	Lines  *bufio.Scanner
	Stderr *strings.Builder
}

// StartPiped starts cmd with start (nil: cmd.Start; or one that starts it in a namespace) with
// pipes to its stdin and stdout. The command is killed, if still running, when the test ends.
func StartPiped(tb testing.TB, cmd *exec.Cmd, start func() error) *Piped {
	tb.Helper()
	if start == nil {
		start = cmd.Start
	}
	p := &Piped{Cmd: cmd, Stderr: &strings.Builder{}}
	cmd.Stderr = p.Stderr
	var err error
	if p.Stdin, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	p.Lines = bufio.NewScanner(stdout)
	p.Lines.Buffer(make([]byte, 64<<10), 1<<20)
	return p
}

// Line reads the next line of stdout ("" at the end).
func (p *Piped) Line() string {
	if !p.Lines.Scan() {
		return ""
	}
	return p.Lines.Text()
}

// StickyDir makes a directory like /tmp — mode 1777, every user may create files in it and reach
// it — removed when the test ends.
func StickyDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "firma-sticky-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		tb.Fatal(err)
	}
	return dir
}
