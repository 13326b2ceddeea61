//go:build linux

package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/testutil"
)

// AuditKey makes an audit signing key the way the guides do (`openssl genpkey -algorithm EC -pkeyopt
// ec_paramgen_curve:P-256`, then `openssl pkey -pubout`) and returns the private key's path (0600
// in a 0700 dir) and the PEM public key's path.
func AuditKey(tb testing.TB) (key, pub string) {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	openssl := testutil.RequireTool(tb, "openssl")
	key, pub = filepath.Join(dir, "audit.key"), filepath.Join(dir, "audit.pub")
	gen := exec.Command(openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
	if out, err := gen.CombinedOutput(); err != nil {
		tb.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command(openssl, "pkey", "-in", key, "-pubout", "-out", pub).CombinedOutput(); err != nil {
		tb.Fatalf("openssl pkey -pubout: %v\n%s", err, out)
	}
	return key, pub
}

// VerifyAudit runs `firma audit verify --pubkey pub files…` and returns its combined output and
// exit status.
func VerifyAudit(tb testing.TB, pub string, files ...string) (string, int) {
	tb.Helper()
	cmd := exec.Command(Binary(tb, "firma"), append([]string{"audit", "verify", "--pubkey", pub}, files...)...)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	if err == nil {
		return string(out), 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		tb.Fatalf("firma audit verify: %v\n%s", err, out)
	}
	return string(out), ee.ExitCode()
}

// AuditFiles lists the sidecar's audit files, rotated ones first, in chain order.
func (s *Sidecar) AuditFiles(tb testing.TB) []string {
	tb.Helper()
	files, err := audit.Files(s.AuditPath)
	if err != nil {
		tb.Fatal(err)
	}
	return files
}

// Signal sends sig to the running sidecar (SIGHUP rotates the audit log).
func (s *Sidecar) Signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	p := s.process()
	if p == nil {
		tb.Fatal("sidecar not started")
	}
	p.Signal(sig)
}

// MountTmpfs mounts a tmpfs of size bytes on a fresh directory and unmounts it when the test ends.
func MountTmpfs(tb testing.TB, size int64) string {
	tb.Helper()
	testutil.RequireRoot(tb)
	dir := tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+strconv.FormatInt(size, 10)+",mode=0700"); err != nil {
		tb.Fatalf("mounting a tmpfs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}
