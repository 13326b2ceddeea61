package keyfile

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func pkcs8(t *testing.T, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestLoadPrivate(t *testing.T) {
	dir := t.TempDir()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}})
	for _, tc := range []struct {
		name string
		data []byte
		mode os.FileMode
		err  error
		msg  string
	}{
		{"pkcs8 ecdsa", pkcs8(t, ec), 0o600, nil, ""},
		{"pkcs8 ed25519", pkcs8(t, ed), 0o400, nil, ""},
		{"sec1 after params", append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...), 0o600, nil, ""},
		{"group readable", pkcs8(t, ec), 0o640, ErrInsecure, "mode 0640"},
		{"world readable", pkcs8(t, ec), 0o604, ErrInsecure, "chmod 600"},
		{"two keys", append(pkcs8(t, ec), pkcs8(t, ed)...), 0o600, ErrMalformed, "more than one"},
		{"certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), 0o600, ErrMalformed, `"CERTIFICATE"`},
		{"encrypted", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}), 0o600, ErrMalformed, "headers"},
		{"garbage", []byte("not a key"), 0o600, ErrMalformed, "no PEM block"},
		{"trailing", append(pkcs8(t, ec), "junk"...), 0o600, ErrMalformed, "trailing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, tc.data, tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			k, err := LoadPrivate(p)
			if tc.err == nil {
				if err != nil || k == nil {
					t.Fatalf("got %v, %v", k, err)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), p) {
				t.Fatalf("err = %v, want %v naming %q and the file", err, tc.err, tc.msg)
			}
		})
	}
	if _, err := LoadPrivate(dir); !errors.Is(err, ErrInsecure) {
		t.Fatalf("directory: %v", err)
	}
}

func TestWriteNew(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	if err := WriteNew(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(p, []byte("two"), 0o600); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite: %v", err)
	}
	b, _ := os.ReadFile(p)
	st, _ := os.Stat(p)
	if string(b) != "one" || st.Mode().Perm() != 0o600 {
		t.Fatalf("%q %v", b, st.Mode())
	}
	if err := WriteAtomic(p, []byte("three"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(p)
	st, _ = os.Stat(p)
	if string(b) != "three" || st.Mode().Perm() != 0o644 {
		t.Fatalf("%q %v", b, st.Mode())
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".*tmp*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
