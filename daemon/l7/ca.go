package l7

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/keyfile"
	"github.com/openfirma/firma/internal/logfields"
)

// The CA's file names inside [sidecar.ca] dir.
const (
	CACertFile = "firma-ca.crt"
	CAKeyFile  = "firma-ca.key"
)

// caLifetime is the validity of a bootstrapped CA: it is created once and never regenerated.
const caLifetime = 10 * 365 * 24 * time.Hour

// Errors LoadCA and LoadOrCreateCA return; every refusal wraps ErrCARefused as well, so that the
// daemon can stop startup on any of them with one check.
var (
	ErrNoCA         = errors.New("no CA")
	ErrCARefused    = errors.New("refusing CA")
	ErrCAIncomplete = errors.New("CA is incomplete")
	ErrCAMismatch   = errors.New("CA key does not match its certificate")
	ErrCAInsecure   = errors.New("CA files are exposed")
	ErrCAInvalid    = errors.New("CA is invalid")
)

// CA is the sidecar's MITM certificate authority. Its private key never leaves this package: code
// above it mints leaves through the Interceptor.
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
}

// Certificate is the parsed CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM is the CA certificate as written in firma-ca.crt (what agents trust).
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// CertPath is the path of firma-ca.crt.
func (ca *CA) CertPath() string { return filepath.Join(ca.dir, CACertFile) }

// KeyPath is the path of firma-ca.key.
func (ca *CA) KeyPath() string { return filepath.Join(ca.dir, CAKeyFile) }

// Fingerprint is the SHA-256 of the certificate's DER, as "AB:CD:…" (what
// `openssl x509 -noout -fingerprint -sha256` prints).
func (ca *CA) Fingerprint() string { return fingerprint(ca.cert) }

func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	parts := make([]string, 0, len(sum))
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// CACert is the CA's certificate alone: what anyone who may read firma-ca.crt sees, root or not.
type CACert struct {
	Path string
	Cert *x509.Certificate
	PEM  []byte
}

// Fingerprint is the certificate's SHA-256 fingerprint, as CA.Fingerprint.
func (c *CACert) Fingerprint() string { return fingerprint(c.Cert) }

// ReadCACert reads and checks firma-ca.crt in dir without touching the key, so that a user who
// cannot read the key (anyone but root) can still see and trust the CA. ErrNoCA when it is absent.
func ReadCACert(dir string) (*CACert, error) {
	path := filepath.Join(dir, CACertFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNoCA, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	cert, err := parseCACert(path, data, time.Now())
	if err != nil {
		return nil, err
	}
	return &CACert{Path: path, Cert: cert, PEM: data}, nil
}

// LoadOrCreateCA loads the CA in dir, or bootstraps one when dir holds neither file. A partial,
// mismatched, exposed or invalid CA is refused (ErrCARefused): it is never regenerated.
func LoadOrCreateCA(dir string, log zerolog.Logger) (*CA, error) {
	ca, err := LoadCA(dir)
	if !errors.Is(err, ErrNoCA) {
		return ca, err
	}
	log.Info().Str(logfields.Dir, dir).Msgf("bootstrapping CA at %s", dir)
	if err := createCA(dir, time.Now()); err != nil {
		return nil, fmt.Errorf("bootstrapping CA at %s: %w", dir, err)
	}
	ca, err = LoadCA(dir)
	if err != nil {
		return nil, fmt.Errorf("loading the CA just written: %w", err)
	}
	log.Info().Str(logfields.Dir, dir).Str(logfields.Fingerprint, ca.Fingerprint()).
		Msgf("wrote %s and %s", CACertFile, CAKeyFile)
	return ca, nil
}

// LoadCA loads the CA in dir and never creates one: ErrNoCA when dir or both files are absent.
func LoadCA(dir string) (*CA, error) {
	if dir == "" {
		return nil, errors.New("CA dir is not set")
	}
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNoCA, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("CA dir: %w", err)
	}
	if !st.IsDir() {
		return nil, refuse(ErrCAInvalid, "%s is not a directory", dir)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return nil, refuse(ErrCAInsecure, "directory %s has mode %04o: others could replace the CA (want 0755)",
			dir, st.Mode().Perm())
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certSt, certErr := os.Stat(certPath)
	keySt, keyErr := os.Stat(keyPath)
	for _, e := range []error{certErr, keyErr} {
		if e != nil && !errors.Is(e, fs.ErrNotExist) {
			return nil, fmt.Errorf("CA: %w", e)
		}
	}
	switch {
	case certErr != nil && keyErr != nil:
		return nil, fmt.Errorf("%w in %s", ErrNoCA, dir)
	case keyErr != nil:
		return nil, refuse(ErrCAIncomplete, "%s exists but %s is missing; restore the key from backup (the CA is never regenerated)",
			certPath, keyPath)
	case certErr != nil:
		return nil, refuse(ErrCAIncomplete, "%s exists but %s is missing; restore the certificate from backup (the CA is never regenerated)",
			keyPath, certPath)
	}
	if !keySt.Mode().IsRegular() || !certSt.Mode().IsRegular() {
		return nil, refuse(ErrCAInvalid, "%s and %s must be regular files", certPath, keyPath)
	}

	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	cert, err := parseCACert(certPath, certPEM, time.Now())
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, refuse(ErrCAMismatch, "%s is not the key of %s", keyPath, certPath)
	}
	return &CA{dir: dir, cert: cert, certPEM: certPEM, key: key}, nil
}

func refuse(kind error, format string, a ...any) error {
	return fmt.Errorf("%w: %w: %s", ErrCARefused, kind, fmt.Sprintf(format, a...))
}

// readKey reads exactly one PKCS#8 ("PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY") block holding an
// ECDSA or RSA key.
func readKey(path string) (crypto.Signer, error) {
	key, err := keyfile.LoadPrivate(path)
	switch {
	case errors.Is(err, keyfile.ErrInsecure):
		return nil, refuse(ErrCAInsecure, "%v", err)
	case err != nil:
		return nil, refuse(ErrCAInvalid, "%v", err)
	}
	switch key.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
		return key, nil
	default:
		return nil, refuse(ErrCAInvalid, "%s: %T keys cannot sign leaves", path, key)
	}
}

// parseCACert checks that data is exactly one certificate of a CA valid at now.
func parseCACert(path string, data []byte, now time.Time) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, refuse(ErrCAInvalid, "%s holds no PEM block", path)
	}
	if block.Type != "CERTIFICATE" {
		return nil, refuse(ErrCAInvalid, "%s holds a %q PEM block, want \"CERTIFICATE\"", path, block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, refuse(ErrCAInvalid, "%s holds more than one PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, refuse(ErrCAInvalid, "%s: %v", path, err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, refuse(ErrCAInvalid, "%s is not a CA certificate (no CA basic constraint or certSign usage)", path)
	}
	if now.After(cert.NotAfter) {
		return nil, refuse(ErrCAInvalid, "%s expired at %s; restore a valid CA and re-trust it on agent hosts",
			path, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return nil, refuse(ErrCAInvalid, "%s is not valid before %s", path, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

// createCA writes a new ECDSA P-256 CA into dir. Each file is written to a temporary name,
// chmodded, fsynced and then linked into place, so an existing file is never overwritten; the key
// goes in first, so an interrupted bootstrap leaves a refused partial CA rather than a certificate
// whose key is lost.
//
// A missing dir is created 0755 whatever the umask (missing parents 0755 under the umask), with
// the key 0600 and the certificate 0644 in it: the key stays root's, and agents that run as other
// users can read the certificate they must trust without being given a copy (as mkcert lays out
// its CAROOT). The mode of an existing dir is never changed; one that others could write to is
// refused by LoadCA.
func createCA(dir string, now time.Time) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         "Firma Sidecar CA",
			Organization:       []string{"firma"},
			OrganizationalUnit: []string{host},
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := keyfile.WriteNew(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	if err := keyfile.WriteNew(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}
