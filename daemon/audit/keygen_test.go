package audit

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/openfirma/firma/internal/testutil"
)

func TestGenerateSigningKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	path := filepath.Join(dir, "audit.key")
	pub, err := GenerateSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600, PublicKeyPath(path): 0o644} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v err %v, want %o", p, fi.Mode().Perm(), err, want)
		}
	}
	signer, err := LoadSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadPublicKey(PublicKeyPath(path))
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Equal(pub) || !signer.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("the key files do not hold the returned key")
	}
	sum := sha256.Sum256([]byte("line"))
	sig, err := signer.Sign(rand.Reader, sum[:], nil)
	if err != nil || !ecdsa.VerifyASN1(loaded, sum[:], sig) {
		t.Fatalf("signature does not verify with the .pub: %v", err)
	}

	// Never overwritten: neither the key nor, when only it is missing, its .pub.
	before, _ := os.ReadFile(path)
	if _, err := GenerateSigningKey(path); !errors.Is(err, ErrKeyExists) {
		t.Errorf("second keygen: %v, want ErrKeyExists", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("the key changed")
	}
	other := filepath.Join(dir, "other.key")
	os.WriteFile(PublicKeyPath(other), []byte("keep me"), 0o644)
	if _, err := GenerateSigningKey(other); !errors.Is(err, ErrKeyExists) {
		t.Errorf("keygen over an existing .pub: %v", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Error("a private key was left without its .pub")
	}
}

// TestGenerateSigningKeyOpenSSL: openssl reads both files as the keys they claim to be.
func TestGenerateSigningKeyOpenSSL(t *testing.T) {
	openssl := testutil.RequireTool(t, "openssl")
	path := filepath.Join(t.TempDir(), "audit.key")
	if _, err := GenerateSigningKey(path); err != nil {
		t.Fatal(err)
	}
	derived, err := exec.Command(openssl, "pkey", "-in", path, "-pubout").Output()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := os.ReadFile(PublicKeyPath(path))
	if string(derived) != string(pub) {
		t.Errorf("openssl derives\n%s\nfrom the key; the .pub holds\n%s", derived, pub)
	}
}
