//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
)

// Process is a long-running process a test started (a sidecar, an authority), with its output.
type Process struct {
	cmd    *exec.Cmd
	out    *testutil.SyncBuffer
	exited chan struct{}
}

// StartProcess runs name in dir with env and waits until its output contains ready. It fails the
// test if the process exits first or is not ready within timeout.
func StartProcess(tb testing.TB, dir string, env []string, ready string, timeout time.Duration, name string, args ...string) *Process {
	tb.Helper()
	return StartProcessIn(tb, nil, dir, env, ready, timeout, name, args...)
}

// StartProcessIn is StartProcess with the process started inside the network namespace ns (nil:
// this process's). Only the network namespace changes: the process sees the host's mounts, bpffs
// and cgroup2 included.
func StartProcessIn(tb testing.TB, ns *testutil.NetNS, dir string, env []string, ready string, timeout time.Duration, name string, args ...string) *Process {
	tb.Helper()
	p := &Process{out: &testutil.SyncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Dir, p.cmd.Env = dir, env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	start := p.cmd.Start
	if ns != nil {
		// A child is created in the network namespace of the thread that forks it.
		start = func() error { return ns.Do(p.cmd.Start) }
	}
	if err := start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.After(timeout)
	for !strings.Contains(p.out.String(), ready) {
		select {
		case <-p.exited:
			tb.Fatalf("%s exited before %q (%v):\n%s", name, ready, p.cmd.ProcessState, p.out.String())
		case <-deadline:
			tb.Fatalf("%s: no %q after %v:\n%s", name, ready, timeout, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p
}

// PID is the process's pid.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Logs is everything the process has written to stdout and stderr.
func (p *Process) Logs() string { return p.out.String() }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) { p.cmd.Process.Signal(sig) }

// Kill stops the process with SIGKILL, as a crash would, and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// Stop sends SIGTERM and waits up to timeout; a process that does not exit is killed and the test
// fails.
func (p *Process) Stop(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.Kill()
		tb.Errorf("%s did not exit on SIGTERM:\n%s", p.cmd.Path, p.Logs())
	}
}
