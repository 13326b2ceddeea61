package authority

import (
	"crypto"
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

func TestGenerateKeyWritesPrivateAndPublic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "keys")
	path := filepath.Join(dir, "authority.key")
	pub, err := GenerateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %#o, want 0600", st.Mode().Perm())
	}
	dst, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %#o, want 0700", dst.Mode().Perm())
	}
	key, err := LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(key.Public()) {
		t.Error("loaded private key does not match the returned public key")
	}
	loadedPub, err := LoadPublicKey(PublicKeyPath(path))
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(loadedPub) {
		t.Error(".pub does not hold the public key")
	}
	// The key signs as a crypto.Signer, and the signature verifies.
	var signer crypto.Signer = key
	sig, err := signer.Sign(rand.Reader, []byte("msg"), crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(loadedPub, []byte("msg"), sig) {
		t.Error("signature does not verify")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("key dir holds %d entries, want 2 (no temp files left)", len(entries))
	}
}

func TestGenerateKeyRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authority.key")
	if _, err := GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if _, err := GenerateKey(path); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second GenerateKey: %v, want ErrKeyExists", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("key was overwritten")
	}

	// A stray .pub alone also stops generation.
	other := filepath.Join(t.TempDir(), "k")
	os.WriteFile(PublicKeyPath(other), []byte("x"), 0o644)
	if _, err := GenerateKey(other); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("GenerateKey with existing .pub: %v, want ErrKeyExists", err)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("private key written although .pub existed")
	}
}

func TestLoadPrivateKeyRefusesReadableKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authority.key")
	if _, err := GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(path, mode)
		if _, err := LoadPrivateKey(path); !errors.Is(err, ErrKeyPermissions) {
			t.Errorf("mode %#o: %v, want ErrKeyPermissions", mode, err)
		}
	}
	os.Chmod(path, 0o400)
	if _, err := LoadPrivateKey(path); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadKeysCheckPEMBlockTypes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "authority.key")
	if _, err := GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	// The public key file where a private key is expected, and the other way round.
	pubAsPriv := filepath.Join(dir, "pub-as-priv")
	data, _ := os.ReadFile(PublicKeyPath(path))
	os.WriteFile(pubAsPriv, data, 0o600)
	if _, err := LoadPrivateKey(pubAsPriv); err == nil || !strings.Contains(err.Error(), `"PUBLIC KEY"`) {
		t.Errorf("public key as private: %v", err)
	}
	if _, err := LoadPublicKey(path); err == nil || !strings.Contains(err.Error(), `"PRIVATE KEY"`) {
		t.Errorf("private key as public: %v", err)
	}

	// An EC key in a PRIVATE KEY block is refused as not Ed25519.
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPath := filepath.Join(dir, "ec.key")
	os.WriteFile(ecPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	if _, err := LoadPrivateKey(ecPath); err == nil || !strings.Contains(err.Error(), "Ed25519") {
		t.Errorf("EC key: %v", err)
	}

	// Trailing data and garbage.
	good, _ := os.ReadFile(path)
	trailing := filepath.Join(dir, "trailing.key")
	os.WriteFile(trailing, append(good, good...), 0o600)
	if _, err := LoadPrivateKey(trailing); err == nil || !strings.Contains(err.Error(), "trailing") {
		t.Errorf("two PEM blocks: %v", err)
	}
	junk := filepath.Join(dir, "junk.key")
	os.WriteFile(junk, []byte("not a key"), 0o600)
	if _, err := LoadPrivateKey(junk); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("junk: %v (want the file named)", err)
	}
}
