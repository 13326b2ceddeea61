package control

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/testutil"
)

// TestRootPeerChecks runs real clients in other processes: one as nobody, one inside the enforced
// cgroup; the kernel's SO_PEERCRED and /proc/<pid>/cgroup must refuse both.
func TestRootPeerChecks(t *testing.T) {
	testutil.RequireRoot(t)
	enforced := testutil.NewCgroup(t, nil)
	reg := newRegistry()
	reg.info.Cgroup = enforced.Rel
	// The go-build dir is root-only: give nobody a copy it can execute, beside the socket.
	exe := copyExecutable(t)
	path := filepath.Join(filepath.Dir(exe), "run", "control.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- NewServer(reg, zerolog.Nop()).Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	// Open the path up so that only the peer checks stand in the way.
	os.Chmod(filepath.Dir(path), 0o755)
	os.Chmod(path, 0o666)

	run := func(cmd *exec.Cmd) string {
		cmd.Env = append(os.Environ(), "FIRMA_CONTROL_DIAL="+path)
		out, _ := cmd.CombinedOutput()
		return strings.TrimSpace(string(out))
	}

	if out := run(exec.Command(exe)); out != "ok" {
		t.Fatalf("root client outside the enforced cgroup: %q", out)
	}
	nobody := exec.Command(exe)
	nobody.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out := run(nobody); !strings.Contains(out, "permission denied") || !strings.Contains(out, "peer uid 65534") {
		t.Fatalf("client as nobody: %q", out)
	}
	inside := enforced.Command(context.Background(), t, exe)
	if out := run(inside); !strings.Contains(out, "inside the enforced cgroup") {
		t.Fatalf("client inside the enforced cgroup: %q", out)
	}
}

func copyExecutable(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "firma-control-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "control.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}
