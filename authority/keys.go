package authority

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"aidanwoods.dev/go-paseto"

	"github.com/openfirma/firma/internal/keyfile"
)

const (
	pemPrivateKey = "PRIVATE KEY" // PKCS #8, as openssl writes it
	pemPublicKey  = "PUBLIC KEY"  // PKIX
)

var (
	// ErrKeyExists is returned by GenerateKey when the key or its .pub already exists.
	ErrKeyExists = errors.New("key file already exists")
	// ErrKeyPermissions is returned when a private key file is readable by group or others.
	ErrKeyPermissions = keyfile.ErrInsecure
)

// Signer is what code above the keystore sees of the authority key: a crypto.Signer for raw
// signatures plus PASETO v4.public signing. Only this package can implement it; the private key
// bytes never leave *Key.
type Signer interface {
	crypto.Signer
	signV4(t *paseto.Token, implicit []byte) string
}

// Key is the authority's Ed25519 private key, loaded by LoadPrivateKey or made by GenerateKey.
type Key struct {
	priv ed25519.PrivateKey
}

// Public returns the ed25519.PublicKey.
func (k *Key) Public() crypto.PublicKey { return k.priv.Public() }

// Sign implements crypto.Signer (pure Ed25519: pass crypto.Hash(0)).
func (k *Key) Sign(r io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.priv.Sign(r, msg, opts)
}

func (k *Key) signV4(t *paseto.Token, implicit []byte) string {
	sk, err := paseto.NewV4AsymmetricSecretKeyFromEd25519(k.priv)
	if err != nil {
		// Only a malformed key gets here, and LoadPrivateKey refuses those.
		panic(fmt.Sprintf("authority key: %v", err))
	}
	return t.V4Sign(sk, implicit)
}

// KeyID is a short, stable name for a public key: the first 8 bytes of its SHA-256, in hex. It is
// put in token footers and logs so that operators can tell which key signed what.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// PublicKeyPath is where GenerateKey writes the public half of the key at path.
func PublicKeyPath(path string) string { return path + ".pub" }

// GenerateKey creates a new Ed25519 key: the private key as PKCS #8 PEM at path (0600, its
// directory created 0700 if missing) and the public key as PKIX PEM at path + ".pub". It refuses to
// overwrite either file (ErrKeyExists). Both files are written temp → chmod → fsync → link, so a
// crash leaves either no key or a whole one.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pubPath := PublicKeyPath(path)
	for _, p := range []string{path, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("%s: %w", p, ErrKeyExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating key directory: %w", err)
	}
	privPEM := pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: privDER})
	if err := writeNewFile(path, privPEM, 0o600); err != nil {
		return nil, fmt.Errorf("writing private key: %w", err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: pubDER})
	if err := writeNewFile(pubPath, pubPEM, 0o644); err != nil {
		// Roll back: a private key without its .pub would make the next generate-key refuse
		// while leaving the operator without a public key to hand to sidecars.
		os.Remove(path)
		return nil, fmt.Errorf("writing public key: %w", err)
	}
	return pub, nil
}

// LoadPrivateKey reads a PKCS #8 Ed25519 private key written by GenerateKey (or by
// `openssl genpkey -algorithm ed25519`). It refuses files that group or others can read, PEM blocks
// of any other type, trailing data, and non-Ed25519 keys.
func LoadPrivateKey(path string) (*Key, error) {
	k, err := keyfile.LoadPrivate(path)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: private key is %T, want Ed25519", path, k)
	}
	return &Key{priv: priv}, nil
}

// LoadPublicKey reads a PKIX Ed25519 public key (the .pub that GenerateKey writes).
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der, err := onePEM(data, pemPublicKey)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: parsing public key: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: public key is %T, want Ed25519", path, k)
	}
	return pub, nil
}

// onePEM returns the bytes of the single PEM block in data, which must be of type want.
func onePEM(data []byte, want string) ([]byte, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block (want %q)", want)
	}
	if block.Type != want {
		return nil, fmt.Errorf("PEM block is %q, want %q", block.Type, want)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("PEM block %q has headers; encrypted keys are not supported", want)
	}
	if len(trimSpace(rest)) != 0 {
		return nil, fmt.Errorf("trailing data after the %q PEM block", want)
	}
	return block.Bytes, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// writeNewFile writes a key file that must not exist yet (keyfile.WriteNew), reporting ErrKeyExists.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	err := keyfile.WriteNew(path, data, perm)
	if errors.Is(err, keyfile.ErrExists) {
		return fmt.Errorf("%s: %w", path, ErrKeyExists)
	}
	return err
}
