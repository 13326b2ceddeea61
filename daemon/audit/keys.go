package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/openfirma/firma/internal/keyfile"
)

// ErrKey marks a signing or public key that cannot be used: wrong PEM type, wrong curve, readable by
// group or others.
var ErrKey = errors.New("unusable audit key")

// LoadSigningKey reads an ECDSA P-256 private key from a PEM file: "PRIVATE KEY" (PKCS#8, what
// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes) or "EC PRIVATE KEY"
// (SEC 1, optionally after an "EC PARAMETERS" block). A file readable by group or others is refused.
func LoadSigningKey(path string) (crypto.Signer, error) {
	k, err := keyfile.LoadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("audit signing key: %w: %w", ErrKey, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit signing key %s: %w: %T, want ECDSA P-256", path, ErrKey, k)
	}
	if key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("audit signing key %s: %w: curve %s, want P-256", path, ErrKey, key.Curve.Params().Name)
	}
	return key, nil
}

// LoadPublicKey reads a "PUBLIC KEY" PEM file (what `openssl pkey -pubout` prints) holding an ECDSA
// P-256 key.
func LoadPublicKey(path string) (*ecdsa.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	return ParsePublicKey(path, data)
}

// ParsePublicKey is LoadPublicKey on bytes; name is used in errors.
func ParsePublicKey(name string, data []byte) (*ecdsa.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("audit public key %s: %w: no PEM block", name, ErrKey)
	}
	if block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("audit public key %s: %w: PEM block %q, want \"PUBLIC KEY\"", name, ErrKey, block.Type)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit public key %s: %w: %w", name, ErrKey, err)
	}
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("audit public key %s: %w: %T, want ECDSA P-256", name, ErrKey, k)
	}
	return ec, nil
}

// KeyID is the lowercase hex SHA-256 of pub's DER SubjectPublicKeyInfo: what open and resume records
// carry as log.key_id. It is "" for a key that cannot be marshalled.
func KeyID(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
