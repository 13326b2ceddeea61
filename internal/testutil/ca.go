package testutil

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/openfirma/firma/internal/fake"
)

// CA is a certificate authority generated for one test; its certificate is written to tb.TempDir()
// only.
type CA struct {
	*fake.CA
	// CertFile holds CertPEM, for clients that take a CA bundle path (curl --cacert, SSL_CERT_FILE).
	CertFile string
}

// NewCA generates a fresh test CA named cn.
func NewCA(tb testing.TB, cn string) *CA {
	tb.Helper()
	c, err := fake.NewCA(cn)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &CA{CA: c, CertFile: filepath.Join(tb.TempDir(), "ca.pem")}
	if err := os.WriteFile(ca.CertFile, ca.CertPEM, 0o644); err != nil {
		tb.Fatal(err)
	}
	return ca
}

// Leaf issues a server certificate for names (DNS names or IP literals).
func (ca *CA) Leaf(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	cert, err := ca.CA.Leaf(names...)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}
