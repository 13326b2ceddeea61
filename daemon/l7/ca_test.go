package l7

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/testutil"
)

func TestCABootstrapAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "firma-ca")
	var logs bytes.Buffer
	ca, err := LoadOrCreateCA(dir, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m struct{ Message string }
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m.Message)
	}
	want := []string{"bootstrapping CA at " + dir, "wrote firma-ca.crt and firma-ca.key"}
	if strings.Join(msgs, "|") != strings.Join(want, "|") {
		t.Errorf("log messages %q, want %q", msgs, want)
	}

	for path, perm := range map[string]os.FileMode{dir: 0o755, ca.KeyPath(): 0o600, ca.CertPath(): 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != perm {
			t.Errorf("%s: mode %04o, want %04o", path, st.Mode().Perm(), perm)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("dir holds %d entries, want the two CA files (no temporaries left)", len(entries))
	}
	cert := ca.Certificate()
	if !cert.IsCA || cert.PublicKeyAlgorithm != x509.ECDSA || cert.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("CA cert: IsCA %v alg %v", cert.IsCA, cert.PublicKeyAlgorithm)
	}
	if !strings.HasPrefix(cert.Subject.CommonName, "Firma") {
		t.Errorf("CN %q does not start with Firma", cert.Subject.CommonName)
	}
	sum := sha256.Sum256(cert.Raw)
	if fp := strings.ReplaceAll(ca.Fingerprint(), ":", ""); !strings.EqualFold(fp, string(hexOf(sum[:]))) {
		t.Errorf("fingerprint %s", ca.Fingerprint())
	}

	// Restart: the same CA, no bootstrap line.
	logs.Reset()
	again, err := LoadOrCreateCA(dir, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	if again.Fingerprint() != ca.Fingerprint() || logs.Len() != 0 {
		t.Errorf("reload: fingerprint %s vs %s, logs %q", again.Fingerprint(), ca.Fingerprint(), logs.String())
	}
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Error("reload changed the certificate")
	}

	// openssl agrees on the fingerprint (what a user compares against).
	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command("openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", ca.CertPath()).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), ca.Fingerprint()) {
			t.Errorf("openssl says %q, we say %s", out, ca.Fingerprint())
		}
	}
}

func hexOf(b []byte) []byte {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return out
}

// Every damaged CA is refused, and never regenerated: the files are left exactly as they were.
func TestCARefusals(t *testing.T) {
	good := t.TempDir()
	if _, err := LoadOrCreateCA(good, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := LoadOrCreateCA(other, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	read := func(dir, name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	goodKey, goodCert := read(good, CAKeyFile), read(good, CACertFile)
	otherKey := read(other, CAKeyFile)

	for _, tc := range []struct {
		name  string
		setup func(dir string)
		kind  error
		msg   string
	}{
		{"cert without key", func(dir string) { write(t, dir, CACertFile, goodCert, 0o644) }, ErrCAIncomplete, "firma-ca.key is missing"},
		{"key without cert", func(dir string) { write(t, dir, CAKeyFile, goodKey, 0o600) }, ErrCAIncomplete, "firma-ca.crt is missing"},
		{"key of another CA", func(dir string) {
			write(t, dir, CACertFile, goodCert, 0o644)
			write(t, dir, CAKeyFile, otherKey, 0o600)
		}, ErrCAMismatch, "is not the key of"},
		{"world-readable key", func(dir string) {
			write(t, dir, CACertFile, goodCert, 0o644)
			write(t, dir, CAKeyFile, goodKey, 0o644)
		}, ErrCAInsecure, "mode 0644"},
		{"group-readable key", func(dir string) {
			write(t, dir, CACertFile, goodCert, 0o644)
			write(t, dir, CAKeyFile, goodKey, 0o640)
		}, ErrCAInsecure, "mode 0640"},
		{"group-writable dir", func(dir string) {
			write(t, dir, CACertFile, goodCert, 0o644)
			write(t, dir, CAKeyFile, goodKey, 0o600)
			os.Chmod(dir, 0o770)
		}, ErrCAInsecure, "want 0755"},
		{"key PEM in cert file", func(dir string) {
			write(t, dir, CACertFile, goodKey, 0o644)
			write(t, dir, CAKeyFile, goodKey, 0o600)
		}, ErrCAInvalid, `want "CERTIFICATE"`},
		{"cert PEM in key file", func(dir string) {
			write(t, dir, CACertFile, goodCert, 0o644)
			write(t, dir, CAKeyFile, goodCert, 0o600)
		}, ErrCAInvalid, `want "PRIVATE KEY"`},
		{"garbage key", func(dir string) {
			write(t, dir, CACertFile, goodCert, 0o644)
			write(t, dir, CAKeyFile, []byte("not pem"), 0o600)
		}, ErrCAInvalid, "no PEM block"},
		{"two certs", func(dir string) {
			write(t, dir, CACertFile, append(append([]byte{}, goodCert...), goodCert...), 0o644)
			write(t, dir, CAKeyFile, goodKey, 0o600)
		}, ErrCAInvalid, "more than one PEM block"},
		{"expired CA", func(dir string) {
			key, cert := makeCA(t, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour), true)
			write(t, dir, CACertFile, cert, 0o644)
			write(t, dir, CAKeyFile, key, 0o600)
		}, ErrCAInvalid, "expired"},
		{"not a CA", func(dir string) {
			key, cert := makeCA(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), false)
			write(t, dir, CACertFile, cert, 0o644)
			write(t, dir, CAKeyFile, key, 0o600)
		}, ErrCAInvalid, "not a CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(dir)
			before := snapshotDir(t, dir)
			_, err := LoadOrCreateCA(dir, zerolog.Nop())
			if !errors.Is(err, ErrCARefused) || !errors.Is(err, tc.kind) {
				t.Fatalf("error %v, want %v", err, tc.kind)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q lacks %q", err, tc.msg)
			}
			if after := snapshotDir(t, dir); after != before {
				t.Errorf("refusal changed the dir:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestLoadCAMissing(t *testing.T) {
	_, err := LoadCA(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, ErrNoCA) {
		t.Errorf("error %v, want ErrNoCA", err)
	}
	if _, err := LoadCA(t.TempDir()); !errors.Is(err, ErrNoCA) {
		t.Errorf("empty dir: %v, want ErrNoCA", err)
	}
}

func write(t *testing.T, dir, name string, data []byte, perm os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
}

func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		info, _ := e.Info()
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		sum := sha256.Sum256(data)
		b.WriteString(e.Name() + " " + info.Mode().String() + " " + string(hexOf(sum[:8])) + "; ")
	}
	return b.String()
}

func makeCA(t *testing.T, notBefore, notAfter time.Time, isCA bool) (keyPEM, certPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test"},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: isCA,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// The CA dir firma creates lets another user read the certificate (what agents running as
// themselves must trust) and nothing of the key; ReadCACert works for them, LoadCA does not.
func TestCACertReadableByOthers(t *testing.T) {
	testutil.RequireRoot(t) // to act as another user
	base, err := os.MkdirTemp("", "firma-ca-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0o077) // the CA dir is 0755 whatever the umask
	dir := filepath.Join(base, "ca")
	ca, err := LoadOrCreateCA(dir, zerolog.Nop())
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("CA dir: %v %v", fi.Mode(), err)
	}
	as := func(name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := as("cat", ca.CertPath()); err != nil || out != string(ca.CertPEM()) {
		t.Errorf("another user cannot read the certificate: %v %q", err, out)
	}
	if out, err := as("cat", ca.KeyPath()); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("another user read the key: %v %q", err, out)
	}
	c, err := ReadCACert(dir)
	if err != nil || c.Fingerprint() != ca.Fingerprint() || c.Path != ca.CertPath() || !bytes.Equal(c.PEM, ca.CertPEM()) {
		t.Errorf("ReadCACert: %+v %v", c, err)
	}
	// A dir that exists keeps its mode: firma never changes the mode of a directory it did not create.
	kept := filepath.Join(base, "kept")
	os.Mkdir(kept, 0o700)
	if _, err := LoadOrCreateCA(kept, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(kept); fi.Mode().Perm() != 0o700 {
		t.Errorf("an existing CA dir was changed to %04o", fi.Mode().Perm())
	}
	if _, err := ReadCACert(filepath.Join(base, "none")); !errors.Is(err, ErrNoCA) {
		t.Errorf("ReadCACert of nothing: %v", err)
	}
}
