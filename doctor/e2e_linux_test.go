//go:build linux

package doctor_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/doctor"
	"github.com/openfirma/firma/internal/e2e"
)

// hostWarnings may be warnings on a host that runs firma well: optional kernel features.
var hostWarnings = []string{"bpf_lsm", "landlock", "bpffs"}

// TestDoctorOnARunningSidecar runs `firma doctor --json` against a real sidecar that follows a real
// authority, signs its audit log and has a CA: every check passes. Then it breaks one thing at a
// time — the authority down, the audit directory read-only, the pins removed, the sidecar stopped
// — and sees exactly the matching checks fail, with exit status 1.
func TestDoctorOnARunningSidecar(t *testing.T) {
	auth := e2e.NewAuthority(t, e2e.AuthorityOptions{})
	auditDir := filepath.Join(t.TempDir(), "audit")
	if err := os.Mkdir(auditDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, _ := e2e.AuditKey(t)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	s := e2e.PrepareSidecar(t, e2e.SidecarOptions{
		AuditPath: filepath.Join(auditDir, "audit.jsonl"),
		AuditTOML: "signing_key_path = " + quote(key),
		ExtraTOML: auth.SidecarTOML(cacheDir) + "\n[sidecar.ca]\ndir = " + quote(filepath.Join(t.TempDir(), "ca")) + "\n",
	})
	s.Start(t)
	waitFile(t, filepath.Join(cacheDir, "bundle.paseto"))
	// A decision, so that the audit log has a record to date.
	s.Run(t, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9/")

	r, code := runDoctor(t, s)
	if code != 0 || !r.Ready {
		t.Fatalf("doctor on a healthy sidecar: exit %d\n%s", code, dump(r))
	}
	for _, c := range r.Checks {
		if c.Status != doctor.OK && !(c.Status == doctor.Warn && slices.Contains(hostWarnings, c.Name)) {
			t.Errorf("%s: %s: %s", c.Name, c.Status, c.Detail)
		}
	}
	for _, want := range []string{"kernel", "bpf", "cgroup_attach", "cgroup2", "btf", "sk_storage", "privileges", "systemd",
		"config", "config.policy", "config.audit_dir", "config.audit_key", "config.ca", "config.authority", "config.control_socket",
		"sidecar.pins", "sidecar.programs", "sidecar.listeners", "sidecar.control", "sidecar.monitor", "sidecar.audit_log",
		"sidecar.authority", "sidecar.bundle", "sidecar.healthz"} {
		if !slices.ContainsFunc(r.Checks, func(c doctor.Check) bool { return c.Name == want }) {
			t.Errorf("no %s check", want)
		}
	}

	t.Run("authority down", func(t *testing.T) {
		auth.Kill(t)
		defer func() {
			auth.Start(t)
		}()
		expectFailures(t, s, "sidecar.authority")
	})

	t.Run("audit dir read-only", func(t *testing.T) {
		// Root ignores modes: a read-only bind mount over the directory is what stops it. The
		// sidecar's open file is unaffected; a rotation would not be.
		if err := unix.Mount(auditDir, auditDir, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(auditDir, unix.MNT_DETACH)
		if err := unix.Mount("", auditDir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			t.Fatal(err)
		}
		expectFailures(t, s, "config.audit_dir", "sidecar.audit_log")
	})

	t.Run("sidecar stopped", func(t *testing.T) {
		s.Stop(t)
		// The pinned programs keep enforcing: only what the process serves is gone.
		r := expectFailures(t, s, "sidecar.listeners", "sidecar.control")
		for _, c := range r.Checks {
			if c.Name == "sidecar.listeners" && !strings.Contains(c.Detail, "nothing listens on transparent 127.0.0.1:") {
				t.Errorf("listeners: %s", c.Detail)
			}
		}
	})

	// A running sidecar re-pins and re-attaches what is removed under it (daemon's integrity
	// check), so the pins are removed while it is stopped.
	t.Run("pins removed", func(t *testing.T) {
		if err := bpf.Cleanup(s.PinDir); err != nil {
			t.Fatal(err)
		}
		expectFailures(t, s, "sidecar.pins", "sidecar.programs", "sidecar.listeners", "sidecar.control")
	})
}

// expectFailures runs doctor and checks that exactly the named checks failed, and exit status 1.
func expectFailures(t *testing.T, s *e2e.Sidecar, names ...string) doctor.Report {
	t.Helper()
	r, code := runDoctor(t, s)
	var failed []string
	for _, c := range r.Failed(doctor.Fail) {
		failed = append(failed, c.Name)
		if c.Fix == "" {
			t.Errorf("%s fails without saying what to do", c.Name)
		}
	}
	slices.Sort(failed)
	slices.Sort(names)
	if code != 1 || r.Ready || !slices.Equal(failed, names) {
		t.Errorf("exit %d, ready %v, failed %v; want exit 1 and %v\n%s", code, r.Ready, failed, names, dump(r))
	}
	return r
}

func runDoctor(t *testing.T, s *e2e.Sidecar) (doctor.Report, int) {
	t.Helper()
	out, err := exec.Command(s.Bin, "doctor", "-c", s.ConfigPath, "--json").Output()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r doctor.Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	return r, code
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func dump(r doctor.Report) string {
	var b strings.Builder
	r.WriteText(&b)
	return b.String()
}
