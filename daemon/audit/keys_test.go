package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

func TestLoadSigningKey(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(k)
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384, _ := x509.MarshalPKCS8PrivateKey(k384)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(k)
	write := func(name string, mode os.FileMode, blocks ...*pem.Block) string {
		var b bytes.Buffer
		for _, bl := range blocks {
			pem.Encode(&b, bl)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b.Bytes(), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := []string{
		write("pkcs8", 0o600, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		write("sec1", 0o400, &pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}, &pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
	}
	for _, p := range good {
		s, err := LoadSigningKey(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if KeyID(s.Public()) != KeyID(&k.PublicKey) {
			t.Fatalf("%s: wrong key", p)
		}
	}
	bad := []string{
		write("world", 0o644, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		write("group", 0o640, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		write("cert", 0o600, &pem.Block{Type: "CERTIFICATE", Bytes: pkcs8}),
		write("p384", 0o600, &pem.Block{Type: "PRIVATE KEY", Bytes: p384}),
		write("two", 0o600, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}, &pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
		write("garbage", 0o600, &pem.Block{Type: "PRIVATE KEY", Bytes: []byte("nope")}),
		write("empty", 0o600),
	}
	for _, p := range bad {
		if _, err := LoadSigningKey(p); !errors.Is(err, ErrKey) {
			t.Errorf("%s: %v, want ErrKey", filepath.Base(p), err)
		}
	}
	// Open refuses to start with an unusable key rather than writing unsigned.
	log, _ := testLogger(t)
	if _, err := Open(Config{FilePath: filepath.Join(dir, "a.jsonl"), SigningKeyPath: bad[0]}, log); !errors.Is(err, ErrKey) {
		t.Fatalf("Open with a world-readable key: %v", err)
	}
	if _, err := ParsePublicKey("x", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})); !errors.Is(err, ErrKey) {
		t.Fatalf("private key as public: %v", err)
	}
}

// A third party with openssl and the public key can check a line: the canonical form in the
// package doc is all it takes.
func TestOpenSSLKeyAndThirdPartyVerification(t *testing.T) {
	testutil.RequireTool(t, "openssl")
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "audit.key"), filepath.Join(dir, "audit.pub")
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
	os.Chmod(key, 0o600)
	run("pkey", "-in", key, "-pubout", "-out", pub)

	path := filepath.Join(dir, "audit.jsonl")
	w := openTest(t, Config{FilePath: path, SigningKeyPath: key})
	if err := w.Append(decision(1, "paste.rs", "DENY")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	pk, err := LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(pk, path); err != nil || !rep.OK() {
		t.Fatalf("verify: %v %v", err, rep.Problem)
	}

	line := readLines(t, path)[1]
	line = line[:len(line)-1]
	i := bytes.LastIndex([]byte(line), []byte(`,"sig":"`))
	body := line[:i] + "}"
	der, err := base64.StdEncoding.DecodeString(line[i+len(`,"sig":"`) : len(line)-2])
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "body"), []byte(body), 0o600)
	os.WriteFile(filepath.Join(dir, "sig.der"), der, 0o600)
	run("dgst", "-sha256", "-verify", pub, "-signature", filepath.Join(dir, "sig.der"), filepath.Join(dir, "body"))

	os.WriteFile(filepath.Join(dir, "body"), []byte(body+" "), 0o600)
	if exec.Command("openssl", "dgst", "-sha256", "-verify", pub, "-signature", filepath.Join(dir, "sig.der"), filepath.Join(dir, "body")).Run() == nil {
		t.Fatal("openssl accepted an altered body")
	}
}
