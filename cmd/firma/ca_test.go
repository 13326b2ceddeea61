package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/daemon/l7"
)

func TestCAShow(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "firma-ca")
	cfgPath := filepath.Join(dir, "firma.toml")
	if err := os.WriteFile(cfgPath, []byte("[sidecar.ca]\ndir = \""+caDir+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// No CA yet: an error, and show never creates one.
	var out, errb bytes.Buffer
	if code := run([]string{"ca", "show", "-c", cfgPath}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no CA") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	if _, err := os.Stat(caDir); !os.IsNotExist(err) {
		t.Error("ca show created the CA dir")
	}

	ca, err := l7.LoadOrCreateCA(caDir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"ca", "show", "-c", cfgPath}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"path:        " + filepath.Join(caDir, "firma-ca.crt"), "fingerprint: SHA256 " + ca.Fingerprint()} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"ca", "show", "--pem", "-c", cfgPath}, &out, &errb); code != 0 || !bytes.Equal(out.Bytes(), ca.CertPEM()) {
		t.Errorf("--pem: exit %d, %q", code, out.String())
	}

	// Another user reads the certificate alone: the same output, and no word about the key.
	geteuid = func() int { return 1000 }
	out.Reset()
	if code := run([]string{"ca", "show", "--pem", "-c", cfgPath}, &out, &errb); code != 0 || !bytes.Equal(out.Bytes(), ca.CertPEM()) {
		t.Errorf("--pem as another user: exit %d, %q", code, out.String())
	}
	os.Chmod(ca.KeyPath(), 0o644)
	if code := run([]string{"ca", "show", "-c", cfgPath}, &out, &errb); code != 0 {
		t.Errorf("as another user, the key is not read: exit %d, %s", code, errb.String())
	}
	geteuid = os.Geteuid
	os.Chmod(ca.KeyPath(), 0o600)

	// A damaged CA is reported, not repaired.
	os.Chmod(ca.KeyPath(), 0o644)
	errb.Reset()
	if code := run([]string{"ca", "show", "-c", cfgPath}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "refusing CA") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"ca", "frobnicate"}, &out, &errb); code != 2 {
		t.Errorf("unknown subcommand: exit %d", code)
	}
}
