package l7

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func testCA(tb testing.TB) *CA {
	tb.Helper()
	ca, err := LoadOrCreateCA(tb.TempDir(), zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

func TestLeafSANs(t *testing.T) {
	ca := testCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	now := time.Now()
	for _, tc := range []struct {
		name   string
		dns    []string
		ips    []string
		verify string
	}{
		{"api.anthropic.com", []string{"api.anthropic.com"}, nil, "api.anthropic.com"},
		{"127.0.0.1", nil, []string{"127.0.0.1"}, "127.0.0.1"},
		{"2001:db8::1", nil, []string{"2001:db8::1"}, "2001:db8::1"},
	} {
		c, err := ca.mintLeaf(tc.name, now, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		leaf := c.Leaf
		if fmt.Sprint(leaf.DNSNames) != fmt.Sprint(tc.dns) {
			t.Errorf("%s: DNS SANs %v", tc.name, leaf.DNSNames)
		}
		var ips []string
		for _, ip := range leaf.IPAddresses {
			ips = append(ips, ip.String())
		}
		if fmt.Sprint(ips) != fmt.Sprint(tc.ips) {
			t.Errorf("%s: IP SANs %v", tc.name, ips)
		}
		if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key is not P-256", tc.name)
		}
		if d := leaf.NotAfter.Sub(now); d > 24*time.Hour || d < 24*time.Hour-time.Second || !leaf.NotBefore.Before(now) || now.Sub(leaf.NotBefore) > 2*time.Hour {
			t.Errorf("%s: validity %s – %s", tc.name, leaf.NotBefore, leaf.NotAfter)
		}
		if leaf.Issuer.String() != ca.Certificate().Subject.String() {
			t.Errorf("%s: issuer %s", tc.name, leaf.Issuer)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: tc.verify, Roots: roots}); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example.com", Roots: roots}); err == nil {
			t.Errorf("%s: verifies for another name", tc.name)
		}
	}
}

func TestLeafCache(t *testing.T) {
	ca := testCA(t)
	c := newLeafCache(ca, 24*time.Hour, 3)
	now := time.Now()
	c.now = func() time.Time { return now }

	// Concurrent handshakes for one name sign once.
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 50)
	for i := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			certs[i], _ = c.get("api.example.com")
		}()
	}
	wg.Wait()
	for _, cert := range certs {
		if cert == nil || cert != certs[0] {
			t.Fatal("concurrent gets returned different leaves")
		}
	}
	if m := c.mints.Load(); m != 1 {
		t.Errorf("%d signings for one name, want 1", m)
	}

	// Bounded LRU: the least recently used name is evicted.
	for _, n := range []string{"b.example.com", "c.example.com", "api.example.com", "d.example.com"} {
		if _, err := c.get(n); err != nil {
			t.Fatal(err)
		}
	}
	if c.len() != 3 {
		t.Errorf("cache holds %d, want 3", c.len())
	}
	mints := c.mints.Load()
	if again, _ := c.get("api.example.com"); again != certs[0] || c.mints.Load() != mints {
		t.Error("recently used leaf was evicted or re-signed")
	}
	if _, _ = c.get("b.example.com"); c.mints.Load() != mints+1 {
		t.Error("least recently used leaf was not evicted")
	}

	// A leaf past three quarters of its life is replaced.
	now = now.Add(19 * time.Hour)
	fresh, _ := c.get("api.example.com")
	if fresh == certs[0] || !fresh.Leaf.NotAfter.After(certs[0].Leaf.NotAfter) {
		t.Error("ageing leaf was not renewed")
	}
}

// Handshakes for one name after the first cost no signing; the interceptor counts hits.
func TestHandshakeUsesCache(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.upstream(apiHost)
	for range 3 {
		tr := e.transport(false, e.caPool())
		if st, _ := get(t, &http.Client{Transport: tr}, "GET", e.url(apiHost, "/"), nil, nil); st != 200 {
			t.Fatal(st)
		}
		tr.CloseIdleConnections()
	}
	s := e.icpt.Stats()
	if s.LeafMints != 1 || s.LeafCacheHits != 2 || s.LeafCached != 1 {
		t.Errorf("stats %+v, want 1 mint and 2 hits", s)
	}
}

// BenchmarkHandshake compares an agent handshake whose leaf is cached with one that signs a leaf.
func BenchmarkHandshake(b *testing.B) {
	ca := testCA(b)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	run := func(b *testing.B, name func(i int) string) {
		c := newLeafCache(ca, 24*time.Hour, 1<<20)
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			n := name(i)
			cli, srv := net.Pipe()
			s := tls.Server(srv, &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.get(n) }})
			errc := make(chan error, 1)
			go func() { errc <- s.Handshake() }()
			if err := tls.Client(cli, &tls.Config{ServerName: n, RootCAs: roots}).Handshake(); err != nil {
				b.Fatal(err)
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			cli.Close()
			srv.Close()
		}
		b.ReportMetric(float64(c.mints.Load())/float64(b.N), "signs/op")
	}
	b.Run("hit", func(b *testing.B) { run(b, func(int) string { return "api.example.com" }) })
	b.Run("miss", func(b *testing.B) { run(b, func(i int) string { return fmt.Sprintf("h%d.example.com", i) }) })
}
