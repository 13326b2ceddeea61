//go:build linux

package bench

import (
	"os"
	"os/exec"
	"testing"
)

// The real /proc: this process and a child it started are both counted.
func TestTreeUsageOfThisProcess(t *testing.T) {
	alone, err := TreeUsage("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if alone.RSS <= 0 || alone.FDs < 3 || alone.Procs < 1 {
		t.Fatalf("usage = %+v", alone)
	}
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	with, err := TreeUsage("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if with.Procs < alone.Procs+1 || with.RSS <= alone.RSS {
		t.Errorf("with a child %+v, alone %+v", with, alone)
	}
}
