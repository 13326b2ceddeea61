package authority

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/keyfile"
	"github.com/openfirma/firma/internal/logfields"
)

// reloadCheck is how often a reloader looks at its files again.
const reloadCheck = time.Second

// reloader holds a value parsed from files and parses them again when one of them changes (size,
// modification time or inode: an edit in place or an atomic replace), looking at most once per
// reloadCheck. A change that does not parse is logged and the last good value stays, so that a
// half-written certificate never takes the service down.
type reloader[T any] struct {
	what  string
	paths []string
	load  func() (T, error)
	log   zerolog.Logger

	mu      sync.Mutex
	val     T
	stamps  []fileStamp
	checked time.Time
}

// fileStamp is what a reloader compares: nil when the file cannot be stat'ed.
type fileStamp = os.FileInfo

func sameStamp(a, b fileStamp) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// newReloader loads the value once; an error here is the caller's (startup fails).
func newReloader[T any](what string, paths []string, load func() (T, error), log zerolog.Logger) (*reloader[T], error) {
	r := &reloader[T]{what: what, paths: paths, load: load, log: log}
	r.stamps = r.stamp()
	v, err := load()
	if err != nil {
		return nil, err
	}
	r.val, r.checked = v, time.Now()
	return r, nil
}

func (r *reloader[T]) stamp() []fileStamp {
	out := make([]fileStamp, len(r.paths))
	for i, p := range r.paths {
		out[i], _ = os.Stat(p)
	}
	return out
}

// get returns the current value, reloading it first if a file changed.
func (r *reloader[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < reloadCheck {
		return r.val
	}
	r.checked = time.Now()
	st := r.stamp()
	if equalStamps(st, r.stamps) {
		return r.val
	}
	r.stamps = st
	v, err := r.load()
	if err != nil {
		r.log.Error().Err(err).Strs(logfields.File, r.paths).Msgf("%s changed but cannot be loaded; keeping the previous one", r.what)
		return r.val
	}
	r.val = v
	r.log.Info().Strs(logfields.File, r.paths).Msgf("%s reloaded", r.what)
	return r.val
}

func equalStamps(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameStamp(a[i], b[i]) {
			return false
		}
	}
	return true
}

// loadKeyPair reads a PEM certificate chain and its private key, refusing a key that group or
// others can read and a certificate that has expired.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := keyfile.ReadPrivate(keyFile)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	if now := time.Now(); now.After(c.Leaf.NotAfter) {
		return nil, fmt.Errorf("%s: certificate expired at %s", certFile, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &c, nil
}

// loadCertPool reads PEM CA certificates; a file without any is an error.
func loadCertPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

// serverTLS is the authority's TLS configuration: its certificate and, with client_ca_file, the
// CAs whose client certificates it accepts, all reread when their files change. A client without
// a certificate still completes the handshake (it may hold a token); the HTTP layer decides.
func serverTLS(cfg *Config, log zerolog.Logger) (*tls.Config, error) {
	if !cfg.TLS() {
		return nil, errors.New("authority.tls_cert_file is not set")
	}
	certs, err := newReloader("TLS certificate", []string{cfg.TLSCertFile, cfg.TLSKeyFile},
		func() (*tls.Certificate, error) { return loadKeyPair(cfg.TLSCertFile, cfg.TLSKeyFile) }, log)
	if err != nil {
		return nil, fmt.Errorf("authority.tls_cert_file: %w", err)
	}
	base := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get(), nil },
	}
	if cfg.ClientCAFile == "" {
		return base, nil
	}
	cas, err := newReloader("client CA", []string{cfg.ClientCAFile},
		func() (*x509.CertPool, error) { return loadCertPool(cfg.ClientCAFile) }, log)
	if err != nil {
		return nil, fmt.Errorf("authority.client_ca_file: %w", err)
	}
	base.ClientAuth = tls.VerifyClientCertIfGiven
	base.ClientCAs = cas.get()
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: base.NextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := base.Clone()
			c.ClientCAs = cas.get()
			return c, nil
		},
	}, nil
}

// clientTLS is the sidecar's TLS configuration for an https authority: ca_file's CAs (or the
// system's) verify the authority; client_cert_file, reread when it changes, authenticates the
// sidecar.
func clientTLS(cfg *ClientConfig, log zerolog.Logger) (*tls.Config, error) {
	// Session resumption: reconnecting after a replica restarts, or opening the second feed's
	// connection, skips the certificate exchange.
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	if cfg.CAFile != "" {
		pool, err := loadCertPool(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("sidecar.authority.ca_file: %w", err)
		}
		tc.RootCAs = pool
	}
	if cfg.ClientCertFile != "" {
		certs, err := newReloader("client certificate", []string{cfg.ClientCertFile, cfg.ClientKeyFile},
			func() (*tls.Certificate, error) { return loadKeyPair(cfg.ClientCertFile, cfg.ClientKeyFile) }, log)
		if err != nil {
			return nil, fmt.Errorf("sidecar.authority.client_cert_file: %w", err)
		}
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return certs.get(), nil }
	}
	return tc, nil
}
