package authority

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The files `firma authority init-tls --dir D` writes, relative to D. Private keys and tokens are
// 0600; D and D/sidecars are 0700.
const (
	TLSCACert       = "ca.crt"        // client_ca_file on the authority, ca_file on every sidecar
	TLSCAKey        = "ca.key"        // keep offline once the certificates are made
	TLSServerCert   = "authority.crt" // tls_cert_file
	TLSServerKey    = "authority.key" // tls_key_file
	TLSTokens       = "tokens.toml"   // tokens_file
	TLSSidecarsDir  = "sidecars"      // NAME.crt, NAME.key (client_cert_file, client_key_file), NAME.token (token_file)
	caValidity      = 10 * 365 * 24 * time.Hour
	defaultValidity = 365 * 24 * time.Hour
)

// InitTLSOptions say what InitTLS writes.
type InitTLSOptions struct {
	Dir      string
	Hosts    []string      // names and addresses the authority's certificate covers
	Sidecars []string      // sidecar names
	Certs    bool          // a client certificate per sidecar
	Tokens   bool          // a bearer token per sidecar
	Validity time.Duration // of the authority's and the sidecars' certificates; 0 = one year
}

// InitTLSResult lists the files InitTLS wrote and those it found and kept.
type InitTLSResult struct {
	Written []string
	Kept    []string
}

// SidecarFiles are the paths of one sidecar's credentials under dir.
func SidecarFiles(dir, name string) (cert, key, token string) {
	base := filepath.Join(dir, TLSSidecarsDir, name)
	return base + ".crt", base + ".key", base + ".token"
}

// InitTLS makes what an authority and its sidecars need for TLS with authenticated sidecars: a
// CA, the authority's certificate and, per sidecar, a client certificate and/or a bearer token
// (its hash added to tokens.toml). It creates what is missing and never overwrites anything: run
// it again with new names to add sidecars under the same CA; delete a certificate to reissue it.
// Every file is written to a temp file, fsynced and linked into place.
func InitTLS(opts InitTLSOptions) (*InitTLSResult, error) {
	if opts.Dir == "" {
		return nil, errors.New("no directory")
	}
	if len(opts.Sidecars) > 0 && !opts.Certs && !opts.Tokens {
		return nil, errors.New("sidecars need certificates, tokens or both")
	}
	for _, name := range opts.Sidecars {
		if !ValidSidecarName(name) {
			return nil, fmt.Errorf("sidecar name %q: use letters, digits, '.', '_' and '-' (at most 64)", name)
		}
	}
	if i := firstDuplicate(opts.Sidecars); i >= 0 {
		return nil, fmt.Errorf("sidecar %q named twice", opts.Sidecars[i])
	}
	validity := opts.Validity
	if validity == 0 {
		validity = defaultValidity
	}
	if validity < 0 || validity > caValidity {
		return nil, fmt.Errorf("validity %s: must be positive and at most %s", validity, caValidity)
	}
	res := &InitTLSResult{}
	if err := makePrivateDir(opts.Dir); err != nil {
		return nil, err
	}
	now := time.Now()
	ca, caKey, err := loadOrCreateCA(opts.Dir, now, res)
	if err != nil {
		return nil, err
	}
	path := func(name string) string { return filepath.Join(opts.Dir, name) }

	switch ok, err := bothExist(path(TLSServerCert), path(TLSServerKey)); {
	case err != nil:
		return nil, err
	case ok:
		res.Kept = append(res.Kept, path(TLSServerCert), path(TLSServerKey))
	default:
		if len(opts.Hosts) == 0 {
			return nil, errors.New("the authority's certificate needs at least one host name or address")
		}
		tmpl := leafTemplate(opts.Hosts[0], now, validity)
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range opts.Hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		if err := writeLeaf(tmpl, ca, caKey, path(TLSServerCert), path(TLSServerKey), res); err != nil {
			return nil, err
		}
	}

	if len(opts.Sidecars) == 0 {
		return res, nil
	}
	if err := makePrivateDir(filepath.Join(opts.Dir, TLSSidecarsDir)); err != nil {
		return nil, err
	}
	tokens := map[string]string{}
	var newTokens []string
	for _, name := range opts.Sidecars {
		certPath, keyPath, tokenPath := SidecarFiles(opts.Dir, name)
		if opts.Certs {
			switch ok, err := bothExist(certPath, keyPath); {
			case err != nil:
				return nil, err
			case ok:
				res.Kept = append(res.Kept, certPath, keyPath)
			default:
				tmpl := leafTemplate(name, now, validity)
				tmpl.Subject.Organization = []string{"firma sidecar"}
				tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
				if err := writeLeaf(tmpl, ca, caKey, certPath, keyPath, res); err != nil {
					return nil, err
				}
			}
		}
		if opts.Tokens {
			if _, err := os.Lstat(tokenPath); err == nil {
				res.Kept = append(res.Kept, tokenPath)
				continue
			}
			tok := NewSidecarToken()
			if err := writeNewFile(tokenPath, []byte(tok+"\n"), 0o600); err != nil {
				return nil, fmt.Errorf("writing %s: %w", tokenPath, err)
			}
			res.Written = append(res.Written, tokenPath)
			tokens[name] = tok
			newTokens = append(newTokens, name)
		}
	}
	if len(newTokens) > 0 {
		if err := AddTokens(path(TLSTokens), tokens, newTokens); err != nil {
			// The new token files name sidecars that the authority would not know: take them back.
			for _, name := range newTokens {
				_, _, tokenPath := SidecarFiles(opts.Dir, name)
				os.Remove(tokenPath)
			}
			return nil, err
		}
		res.Written = append(res.Written, path(TLSTokens))
	}
	return res, nil
}

func firstDuplicate(names []string) int {
	for i, n := range names {
		if slices.Index(names, n) != i {
			return i
		}
	}
	return -1
}

// makePrivateDir creates dir 0700, or accepts an existing one that others cannot write to (its
// mode is never changed: firma does not chmod what it did not create).
func makePrivateDir(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s has mode %04o: others could replace the keys in it (want 0700)", dir, st.Mode().Perm())
	}
	return nil
}

// bothExist reports whether both files exist; one without the other is an error.
func bothExist(a, b string) (bool, error) {
	_, errA := os.Lstat(a)
	_, errB := os.Lstat(b)
	for _, e := range []error{errA, errB} {
		if e != nil && !errors.Is(e, fs.ErrNotExist) {
			return false, e
		}
	}
	switch {
	case errA == nil && errB == nil:
		return true, nil
	case errA == nil:
		return false, fmt.Errorf("%s exists but %s does not; restore it or remove both", a, b)
	case errB == nil:
		return false, fmt.Errorf("%s exists but %s does not; restore it or remove both", b, a)
	}
	return false, nil
}

// loadOrCreateCA loads ca.crt and ca.key from dir, or creates them when both are absent.
func loadOrCreateCA(dir string, now time.Time, res *InitTLSResult) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, TLSCACert), filepath.Join(dir, TLSCAKey)
	ok, err := bothExist(certPath, keyPath)
	if err != nil {
		return nil, nil, err
	}
	if ok {
		pair, err := loadKeyPair(certPath, keyPath)
		if err != nil {
			return nil, nil, fmt.Errorf("CA: %w", err)
		}
		if !pair.Leaf.IsCA {
			return nil, nil, fmt.Errorf("%s is not a CA certificate", certPath)
		}
		signer, ok := pair.PrivateKey.(crypto.Signer)
		if !ok {
			return nil, nil, fmt.Errorf("%s: key cannot sign", keyPath)
		}
		res.Kept = append(res.Kept, certPath, keyPath)
		return pair.Leaf, signer, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "firma authority CA", Organization: []string{"firma"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	if err := writeKeyAndCert(der, key, certPath, keyPath); err != nil {
		return nil, nil, err
	}
	res.Written = append(res.Written, certPath, keyPath)
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func leafTemplate(cn string, now time.Time, validity time.Duration) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
}

// writeLeaf makes a fresh key, has the CA sign tmpl for it, and writes both.
func writeLeaf(tmpl, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string, res *InitTLSResult) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("creating %s: %w", certPath, err)
	}
	if err := writeKeyAndCert(der, key, certPath, keyPath); err != nil {
		return err
	}
	res.Written = append(res.Written, certPath, keyPath)
	return nil
}

// writeKeyAndCert writes the key (0600) first, then the certificate (0644); if the certificate
// cannot be written the key is removed, so that no half pair is left behind.
func writeKeyAndCert(der []byte, key *ecdsa.PrivateKey, certPath, keyPath string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNewFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", keyPath, err)
	}
	if err := writeNewFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("writing %s: %w", certPath, err)
	}
	return nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}
