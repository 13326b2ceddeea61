package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/openfirma/firma/internal/keyfile"
)

// ErrKeyExists is returned by GenerateSigningKey when the key or its .pub already exists.
var ErrKeyExists = errors.New("key file already exists")

// PublicKeyPath is where GenerateSigningKey writes the public half of the key at path.
func PublicKeyPath(path string) string { return path + ".pub" }

// GenerateSigningKey creates an ECDSA P-256 signing key: the private key as PKCS #8 PEM at path
// (0600; its directory created 0700 if missing), readable by LoadSigningKey, and the public key as
// PKIX PEM at PublicKeyPath(path) (0644), readable by LoadPublicKey and by openssl. Neither file
// is ever overwritten (ErrKeyExists); each is written atomically, and a failure leaves neither.
func GenerateSigningKey(path string) (*ecdsa.PublicKey, error) {
	pubPath := PublicKeyPath(path)
	for _, p := range []string{path, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("audit signing key: %s: %w", p, ErrKeyExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("audit signing key: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating audit signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding audit signing key: %w", err)
	}
	pubPEM, err := MarshalPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	if err := keyfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("writing audit signing key: %w", keyExists(err))
	}
	if err := keyfile.WriteNew(pubPath, pubPEM, 0o644); err != nil {
		os.Remove(path) // a key without its .pub would make the next keygen refuse, with nothing to verify with
		return nil, fmt.Errorf("writing audit public key: %w", keyExists(err))
	}
	return &key.PublicKey, nil
}

func keyExists(err error) error {
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %w", ErrKeyExists, err)
	}
	return err
}

// MarshalPublicKey is pub as a "PUBLIC KEY" PEM block, what `openssl pkey -pubout` prints.
func MarshalPublicKey(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding audit public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
