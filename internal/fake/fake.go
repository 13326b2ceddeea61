// Package fake holds stand-ins for the outside world that firma's tests and `firma demo` talk to: a
// throwaway certificate authority generated at runtime (never committed, never trusted by the host)
// and fake upstream servers that count connections and record requests. It does no enforcement and
// binds only the addresses it is given (tests and the demo use 127.0.0.0/8).
package fake

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// CA is a certificate authority that lives in memory only.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// NewCA generates a fresh CA named cn, valid for a day.
func NewCA(cn string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"firma tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Pool returns a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf issues a server certificate for names (DNS names or IP literals).
func (ca *CA) Leaf(names ...string) (tls.Certificate, error) {
	if len(names) == 0 {
		return tls.Certificate{}, fmt.Errorf("leaf: no names")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	sn, err := serial()
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// SeenRequest is what a fake upstream recorded of one HTTP request.
type SeenRequest struct {
	Method string
	Host   string
	Path   string
	Proto  string
	Header http.Header
	Body   []byte
	TLS    *tls.ConnectionState
}

// Upstream is a fake server that counts connections and records requests. It answers every HTTP
// request with "hello from <Name> <path>".
type Upstream struct {
	Name     string
	Addr     netip.AddrPort
	srv      *http.Server
	conns    atomic.Int64
	mu       sync.Mutex
	requests []SeenRequest
	handler  http.Handler // SetHandler's
	stream   bool
}

// SetHandler replaces the default answer with h (the request is still recorded, and h can read its
// body again). With stream, h gets the request body as it arrives, unread, and the request is
// recorded without its body.
func (u *Upstream) SetHandler(h http.Handler, stream bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.handler, u.stream = h, stream
}

// NewHTTPS serves HTTPS (h2 and http/1.1) on addr with a leaf from ca for names.
func NewHTTPS(name string, addr netip.AddrPort, ca *CA, names ...string) (*Upstream, error) {
	cert, err := ca.Leaf(names...)
	if err != nil {
		return nil, err
	}
	return start(name, addr, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
}

// NewHTTP serves plain HTTP/1.1 on addr.
func NewHTTP(name string, addr netip.AddrPort) (*Upstream, error) { return start(name, addr, nil) }

func start(name string, addr netip.AddrPort, cfg *tls.Config) (*Upstream, error) {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("fake upstream %s: %w", name, err)
	}
	u := &Upstream{Name: name, Addr: netip.MustParseAddrPort(ln.Addr().String())}
	u.srv = &http.Server{
		Handler:           http.HandlerFunc(u.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				u.conns.Add(1)
			}
		},
	}
	if cfg != nil {
		u.srv.TLSConfig = cfg
		go u.srv.ServeTLS(ln, "", "")
	} else {
		go u.srv.Serve(ln)
	}
	return u, nil
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	handler, stream := u.handler, u.stream
	u.mu.Unlock()
	var body []byte
	if !stream || handler == nil {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	u.mu.Lock()
	u.requests = append(u.requests, SeenRequest{
		Method: r.Method, Host: r.Host, Path: r.URL.RequestURI(), Proto: r.Proto,
		Header: r.Header.Clone(), Body: body, TLS: r.TLS,
	})
	u.mu.Unlock()
	if handler != nil {
		handler.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "hello from %s %s\n", u.Name, r.URL.Path)
}

// Close stops the server and its connections.
func (u *Upstream) Close() error { return u.srv.Close() }

// Conns is how many connections reached the upstream.
func (u *Upstream) Conns() int64 { return u.conns.Load() }

// Requests returns a copy of what the upstream has seen.
func (u *Upstream) Requests() []SeenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]SeenRequest(nil), u.requests...)
}

// Port is the upstream's port as a string, for URLs.
func (u *Upstream) Port() string { return strconv.Itoa(int(u.Addr.Port())) }
