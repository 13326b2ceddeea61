package authority

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/keyfile"
	"github.com/openfirma/firma/internal/testutil"
)

// The fleet: an authority over TLS that authenticates its sidecars, replicas that answer alike,
// and clients that fail over between them and say loudly what they reject.

// tlsAuthorityFiles is authorityFiles served over TLS, with the files InitTLS makes: sidecars s1
// and s2, each with a client certificate and a token.
func tlsAuthorityFiles(t *testing.T, ttl int64) (Config, string) {
	t.Helper()
	cfg := authorityFiles(t, ttl)
	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := InitTLS(InitTLSOptions{Dir: dir, Hosts: []string{"127.0.0.1", "localhost"},
		Sidecars: []string{"s1", "s2"}, Certs: true, Tokens: true}); err != nil {
		t.Fatal(err)
	}
	cfg.TLSCertFile = filepath.Join(dir, TLSServerCert)
	cfg.TLSKeyFile = filepath.Join(dir, TLSServerKey)
	cfg.ClientCAFile = filepath.Join(dir, TLSCACert)
	cfg.TokensFile = filepath.Join(dir, TLSTokens)
	return cfg, dir
}

// sidecarConfig is [sidecar.authority] for sidecar name of the InitTLS dir tlsDir, following urls,
// authenticating with its certificate and/or its token.
func sidecarConfig(t *testing.T, cfg Config, tlsDir, name string, urls []string, cert, token bool) ClientConfig {
	t.Helper()
	cc := DefaultClientConfig()
	cc.URLs = urls
	cc.PublicKeyPath = PublicKeyPath(cfg.KeyFile)
	cc.CacheDir = t.TempDir()
	cc.CAFile = filepath.Join(tlsDir, TLSCACert)
	certPath, keyPath, tokenPath := SidecarFiles(tlsDir, name)
	if cert {
		cc.ClientCertFile, cc.ClientKeyFile = certPath, keyPath
	}
	if token {
		cc.TokenFile = tokenPath
	}
	return cc
}

// logBuffer is a zerolog logger into a buffer the test reads (and the test log with -v).
func logBuffer(t *testing.T) (zerolog.Logger, *testutil.SyncBuffer) {
	buf := &testutil.SyncBuffer{}
	var w io.Writer = buf
	if testing.Verbose() {
		w = zerolog.MultiLevelWriter(buf, zerolog.NewTestWriter(t))
	}
	return zerolog.New(w).Level(zerolog.DebugLevel), buf
}

// rawHTTPS is an HTTP client trusting tlsDir's CA, presenting cert when it is not nil.
func rawHTTPS(t *testing.T, tlsDir string, cert *tls.Certificate) *http.Client {
	t.Helper()
	pool, err := loadCertPool(filepath.Join(tlsDir, TLSCACert))
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{RootCAs: pool}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, Proxy: nil}, Timeout: 10 * time.Second}
}

func status(t *testing.T, hc *http.Client, u, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestInitTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	res, err := InitTLS(InitTLSOptions{Dir: dir, Hosts: []string{"authority.internal", "10.1.2.3"},
		Sidecars: []string{"web-1", "web-2"}, Certs: true, Tokens: true, Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Kept) != 0 || len(res.Written) != 2+2+3*2+1 {
		t.Errorf("written %v, kept %v", res.Written, res.Kept)
	}
	for _, d := range []string{dir, filepath.Join(dir, TLSSidecarsDir)} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want 0700", d, st.Mode(), err)
		}
	}
	c1, k1, tok1 := SidecarFiles(dir, "web-1")
	for _, secret := range []string{filepath.Join(dir, TLSCAKey), filepath.Join(dir, TLSServerKey), k1, tok1, filepath.Join(dir, TLSTokens)} {
		if st, err := os.Stat(secret); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want 0600", secret, st.Mode(), err)
		}
	}
	pool, err := loadCertPool(filepath.Join(dir, TLSCACert))
	if err != nil {
		t.Fatal(err)
	}
	server, err := loadKeyPair(filepath.Join(dir, TLSServerCert), filepath.Join(dir, TLSServerKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"authority.internal", "10.1.2.3"} {
		if _, err := server.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := server.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the server certificate also authenticates clients")
	}
	if d := time.Until(server.Leaf.NotAfter); d < 47*time.Hour || d > 48*time.Hour {
		t.Errorf("server certificate valid for %s, want 48h", d)
	}
	client, err := loadKeyPair(c1, k1)
	if err != nil {
		t.Fatal(err)
	}
	if client.Leaf.Subject.CommonName != "web-1" {
		t.Errorf("client CN %q", client.Leaf.Subject.CommonName)
	}
	if _, err := client.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := client.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "web-1"}); err == nil {
		t.Error("a sidecar certificate also serves as a server certificate")
	}
	tokens, err := ReadTokens(filepath.Join(dir, TLSTokens))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := readTokenFile(tok1)
	if err != nil || !strings.HasPrefix(tok, tokenPrefix) {
		t.Fatalf("token %q: %v", tok, err)
	}
	if name, ok := tokens.Lookup(tok); !ok || name != "web-1" {
		t.Errorf("token of web-1 looks up as %q %v", name, ok)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, TLSTokens)); strings.Contains(string(raw), tok) {
		t.Error("tokens.toml holds a token, not its hash")
	}

	// Again, with one more sidecar: the CA and everything made before are kept, byte for byte.
	caBefore, _ := os.ReadFile(filepath.Join(dir, TLSCACert))
	res, err = InitTLS(InitTLSOptions{Dir: dir, Hosts: []string{"other"}, Sidecars: []string{"web-1", "web-3"}, Certs: true, Tokens: true})
	if err != nil {
		t.Fatal(err)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(dir, TLSCACert)); string(caAfter) != string(caBefore) {
		t.Error("the CA was replaced")
	}
	c3, _, tok3 := SidecarFiles(dir, "web-3")
	if !slices.Contains(res.Written, c3) || !slices.Contains(res.Written, tok3) || !slices.Contains(res.Kept, c1) || slices.Contains(res.Written, c1) {
		t.Errorf("second run: written %v, kept %v", res.Written, res.Kept)
	}
	tokens, err = ReadTokens(filepath.Join(dir, TLSTokens))
	if err != nil || !slices.Equal(tokens.Names(), []string{"web-1", "web-2", "web-3"}) {
		t.Fatalf("tokens after the second run: %v %v", tokens.Names(), err)
	}
	if name, ok := tokens.Lookup(tok); !ok || name != "web-1" {
		t.Error("web-1's token changed")
	}

	// Half a pair, a bad name, a shared directory: refused.
	os.Remove(filepath.Join(dir, TLSServerKey))
	if _, err := InitTLS(InitTLSOptions{Dir: dir, Hosts: []string{"x"}}); err == nil || !strings.Contains(err.Error(), TLSServerKey) {
		t.Errorf("missing server key: %v", err)
	}
	if _, err := InitTLS(InitTLSOptions{Dir: t.TempDir(), Hosts: []string{"x"}, Sidecars: []string{"../etc"}, Certs: true}); err == nil {
		t.Error("a sidecar named ../etc was accepted")
	}
	open := t.TempDir()
	os.Chmod(open, 0o777)
	if _, err := InitTLS(InitTLSOptions{Dir: open, Hosts: []string{"x"}}); err == nil || !strings.Contains(err.Error(), "others could replace") {
		t.Errorf("world-writable dir: %v", err)
	}
}

func TestTokensFile(t *testing.T) {
	tok := NewSidecarToken()
	good := "# comment\n[[sidecar]]\nname = \"a\"\ntoken_sha256 = \"" + HashToken(tok) + "\"\n"
	ts, err := ParseTokens("tokens.toml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := ts.Lookup(tok); !ok || name != "a" {
		t.Errorf("lookup: %q %v", name, ok)
	}
	for _, bad := range []string{"", tok + "x", "firma-sidecar-"} {
		if _, ok := ts.Lookup(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, tc := range []struct{ name, text, want string }{
		{"unknown key", good + "token = \"plain\"\n", `tokens.toml:5:1: unknown key "sidecar.token"`},
		{"short hash", "[[sidecar]]\nname = \"a\"\ntoken_sha256 = \"abcd\"\n", "sidecar[0] (a): token_sha256 must be 64 hex digits"},
		{"twice", good + strings.TrimPrefix(good, "# comment\n"), "sidecar[1] (a): name listed twice"},
		{"bad name", "[[sidecar]]\nname = \"a b\"\ntoken_sha256 = \"" + HashToken(tok) + "\"\n", `name "a b" is not a valid sidecar name`},
		{"shared hash", good + "[[sidecar]]\nname = \"b\"\ntoken_sha256 = \"" + HashToken(tok) + "\"\n", `same token hash as "a"`},
		{"syntax", "[[sidecar]\n", "tokens.toml:1:"},
	} {
		if _, err := ParseTokens("tokens.toml", []byte(tc.text)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}

	// A sidecar's token file must be private.
	path := filepath.Join(t.TempDir(), "s.token")
	os.WriteFile(path, []byte(tok+"\n"), 0o644)
	if _, err := readTokenFile(path); !errors.Is(err, ErrKeyPermissions) {
		t.Errorf("0644 token file: %v", err)
	}
	os.Chmod(path, 0o600)
	if got, err := readTokenFile(path); err != nil || got != tok {
		t.Errorf("token file: %q %v", got, err)
	}
}

func TestConfigValidateFleet(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" = valid
	}{
		{"guide: plain on loopback", func(c *Config) {}, ""},
		{"plain on localhost", func(c *Config) { c.ListenAddr = "localhost:50051" }, ""},
		{"plain beyond loopback", func(c *Config) { c.ListenAddr = "0.0.0.0:50051" }, "plain HTTP is only served on loopback"},
		{"plain on all interfaces", func(c *Config) { c.ListenAddr = ":50051"; c.TokensFile = "t" }, "plain HTTP is only served on loopback"},
		{"tls without auth beyond loopback", func(c *Config) { c.ListenAddr = "[::]:50051"; c.TLSCertFile, c.TLSKeyFile = "c", "k" },
			"set client_ca_file or tokens_file"},
		{"tls with client CAs", func(c *Config) {
			c.ListenAddr = "[::]:50051"
			c.TLSCertFile, c.TLSKeyFile, c.ClientCAFile = "c", "k", "ca"
		}, ""},
		{"tls with tokens", func(c *Config) {
			c.ListenAddr = "10.0.0.1:443"
			c.TLSCertFile, c.TLSKeyFile, c.TokensFile = "c", "k", "t"
		}, ""},
		{"cert without key", func(c *Config) { c.TLSCertFile = "c" }, "tls_cert_file and tls_key_file must be set together"},
		{"client CAs without TLS", func(c *Config) { c.ClientCAFile = "ca" }, "client certificates need TLS"},
	} {
		c := DefaultConfig()
		tc.edit(&c)
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}

	for _, tc := range []struct {
		name string
		edit func(*ClientConfig)
		want string
	}{
		{"guide", func(c *ClientConfig) { c.URL = "http://[::1]:50051" }, ""},
		{"replicas", func(c *ClientConfig) {
			c.URLs = []string{"https://a:1", "https://b:1"}
			c.CAFile = "ca"
			c.TokenFile = "t"
		}, ""},
		{"both", func(c *ClientConfig) { c.URL = "https://a:1"; c.URLs = []string{"https://b:1"} }, "set url or urls, not both"},
		{"twice", func(c *ClientConfig) { c.URLs = []string{"https://a:1", "https://a:1"} }, "listed twice"},
		{"plain beyond loopback", func(c *ClientConfig) { c.URL = "http://authority.internal:50051" }, "plain http only to a loopback authority"},
		{"token over loopback", func(c *ClientConfig) { c.URL = "http://127.0.0.1:50051"; c.TokenFile = "t" }, ""},
		{"cert over plain", func(c *ClientConfig) { c.URL = "http://127.0.0.1:1"; c.ClientCertFile, c.ClientKeyFile = "c", "k" }, "need an https authority url"},
		{"ca over plain", func(c *ClientConfig) { c.URL = "http://127.0.0.1:1"; c.CAFile = "ca" }, "no authority url is https"},
		{"cert without key", func(c *ClientConfig) { c.URL = "https://a:1"; c.ClientCertFile = "c" }, "must be set together"},
		{"token without url", func(c *ClientConfig) { c.URL = ""; c.TokenFile = "t" }, "only used with url or urls"},
		{"user in url", func(c *ClientConfig) { c.URL = "https://u:p@a:1" }, "no user"},
		{"skew", func(c *ClientConfig) { c.URL = "https://a:1"; c.MaxClockSkew.Duration = 2 * time.Hour }, "clock_skew: must be between 0s and 1h0m0s"},
	} {
		c := DefaultClientConfig()
		c.PublicKeyPath = "k.pub"
		tc.edit(&c)
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if d := DefaultClientConfig(); d.ClockSkew() != 0 {
		t.Errorf("default clock_skew %s, want 0", d.ClockSkew())
	}
}

func TestServerAuthenticatesSidecars(t *testing.T) {
	t.Parallel()
	cfg, tlsDir := tlsAuthorityFiles(t, 60)
	log, logs := logBuffer(t)
	a := startAuthorityLog(t, cfg, log)
	bundleURL := a.url + PathBundle
	revURL := a.url + PathRevocations

	// No credentials: 401 on both feeds, logged and counted; /healthz stays open for load
	// balancers.
	anon := rawHTTPS(t, tlsDir, nil)
	for _, u := range []string{bundleURL, revURL} {
		if got := status(t, anon, u, ""); got != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: %d, want 401", u, got)
		}
	}
	if got := status(t, anon, a.url+PathHealth, ""); got != http.StatusOK {
		t.Errorf("healthz: %d", got)
	}
	if n := strings.Count(logs.String(), "request refused: not an authenticated sidecar"); n != 2 {
		t.Errorf("%d refusals logged, want 2:\n%s", n, logs.String())
	}

	// A token from tokens.toml passes; anything else is refused.
	_, _, tokPath := SidecarFiles(tlsDir, "s1")
	tok, err := readTokenFile(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := status(t, anon, bundleURL, tok); got != http.StatusOK {
		t.Errorf("with s1's token: %d", got)
	}
	for _, bad := range []string{NewSidecarToken(), tok[:len(tok)-1]} {
		if got := status(t, anon, bundleURL, bad); got != http.StatusUnauthorized {
			t.Errorf("with token %q: %d, want 401", bad, got)
		}
	}
	req, _ := http.NewRequest("GET", bundleURL, nil)
	req.Header.Set("Authorization", "Basic "+tok)
	if resp, err := anon.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Basic scheme: %v %v", resp, err)
	}

	// A client certificate from the CA passes; so does it with its own sidecar's token, but not
	// with another's.
	c1, k1, _ := SidecarFiles(tlsDir, "s1")
	s1cert, err := loadKeyPair(c1, k1)
	if err != nil {
		t.Fatal(err)
	}
	withCert := rawHTTPS(t, tlsDir, s1cert)
	if got := status(t, withCert, bundleURL, ""); got != http.StatusOK {
		t.Errorf("with s1's certificate: %d", got)
	}
	_, _, tok2Path := SidecarFiles(tlsDir, "s2")
	tok2, _ := readTokenFile(tok2Path)
	if got := status(t, withCert, bundleURL, tok2); got != http.StatusUnauthorized {
		t.Errorf("s1's certificate with s2's token: %d, want 401", got)
	}

	// A certificate from another CA fails the handshake, and the authority says so.
	otherDir := filepath.Join(t.TempDir(), "other")
	if _, err := InitTLS(InitTLSOptions{Dir: otherDir, Hosts: []string{"x"}, Sidecars: []string{"s1"}, Certs: true}); err != nil {
		t.Fatal(err)
	}
	oc, ok, _ := SidecarFiles(otherDir, "s1")
	foreign, _ := loadKeyPair(oc, ok)
	if _, err := rawHTTPS(t, tlsDir, foreign).Get(bundleURL); err == nil {
		t.Error("a certificate from another CA was accepted")
	}
	eventually(t, 2*time.Second, "the handshake failure logged", func() bool {
		return strings.Contains(logs.String(), "TLS handshake error")
	})

	// The real client: by certificate, by token, and without either.
	byCert, _, _ := startClientConfig(t, sidecarConfig(t, cfg, tlsDir, "s1", []string{a.url}, true, false), testLogger(t))
	byToken, _, _ := startClientConfig(t, sidecarConfig(t, cfg, tlsDir, "s2", []string{a.url}, false, true), testLogger(t))
	for _, c := range []*Client{byCert, byToken} {
		select {
		case <-c.Ready():
		case <-time.After(5 * time.Second):
			t.Fatalf("client not ready: %+v", c.Status())
		}
	}
	nobodyLog, nobodyLogs := logBuffer(t)
	nobody, _, _ := startClientConfig(t, sidecarConfig(t, cfg, tlsDir, "s1", []string{a.url}, false, false), nobodyLog)
	eventually(t, 5*time.Second, "two refusals at the unauthenticated client", func() bool {
		return nobody.Status().PollErrors[PollUnauthorized] >= 2
	})
	st := nobody.Status()
	if !st.Stale || st.Version != "" || st.LastFailure == nil || st.LastFailure.Reason != PollUnauthorized {
		t.Errorf("unauthenticated client: %+v", st)
	}
	if n := strings.Count(nobodyLogs.String(), `"level":"error"`); n < 2 {
		t.Errorf("the refused client logged %d errors, want one per refusal:\n%s", n, nobodyLogs.String())
	}
	var health map[string]any
	resp, err := anon.Get(a.url + PathHealth)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if n, _ := health["auth_refused"].(float64); n < 7 || health["tls"] != true {
		t.Errorf("healthz %v: want tls and at least 7 refusals", health)
	}

	// Removing s2 from tokens.toml locks it out within a second or so, without a restart.
	tokensPath := filepath.Join(tlsDir, TLSTokens)
	data, _ := os.ReadFile(tokensPath)
	cut := strings.Index(string(data), "\n[[sidecar]]\nname = \"s2\"")
	if err := keyfile.WriteAtomic(tokensPath, data[:cut], 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "s2's token refused", func() bool { return status(t, anon, bundleURL, tok2) == http.StatusUnauthorized })
	if got := status(t, anon, bundleURL, tok); got != http.StatusOK {
		t.Errorf("s1's token after s2 was removed: %d", got)
	}
}

func TestClientVerifiesAuthorityCertificate(t *testing.T) {
	t.Parallel()
	cfg, tlsDir := tlsAuthorityFiles(t, 60)
	a := startAuthority(t, cfg)
	// A sidecar given another CA (or the system's) does not talk to this authority at all.
	other := filepath.Join(t.TempDir(), "other")
	if _, err := InitTLS(InitTLSOptions{Dir: other, Hosts: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	cc := sidecarConfig(t, cfg, tlsDir, "s1", []string{a.url}, false, true)
	cc.CAFile = filepath.Join(other, TLSCACert)
	c, _, _ := startClientConfig(t, cc, testLogger(t))
	eventually(t, 5*time.Second, "a failed poll", func() bool { return c.Status().PollErrors[PollUnreachable] > 0 })
	if st := c.Status(); st.Version != "" || !strings.Contains(st.LastFailure.Error, "certificate") {
		t.Errorf("client with the wrong CA: %+v", st.LastFailure)
	}
}

func TestPlainLoopbackWithTokens(t *testing.T) {
	t.Parallel()
	cfg, tlsDir := tlsAuthorityFiles(t, 60)
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.ClientCAFile = "", "", ""
	log, logs := logBuffer(t)
	a := startAuthorityLog(t, cfg, log)
	eventually(t, 2*time.Second, "a warning about plain HTTP", func() bool {
		return strings.Contains(logs.String(), "serving plain HTTP on loopback")
	})
	cc := sidecarConfig(t, cfg, tlsDir, "s2", []string{a.url}, false, true)
	cc.CAFile = ""
	c, _, _ := startClientConfig(t, cc, testLogger(t))
	select {
	case <-c.Ready():
	case <-time.After(5 * time.Second):
		t.Fatalf("token client over loopback HTTP not ready: %+v", c.Status())
	}
	if got := status(t, http.DefaultClient, a.url+PathBundle, ""); got != http.StatusUnauthorized {
		t.Errorf("without a token: %d", got)
	}
}

// Two authorities reading the same files are interchangeable: same versions, same ETags, same
// revocation hashes, so a page asked of one continues a list fetched from the other.
func TestReplicasAnswerAlike(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-1", Reason: "r"})
	a := startAuthority(t, cfg)
	time.Sleep(10 * time.Millisecond) // a different start time must not matter
	cfg2 := cfg
	b := startAuthority(t, cfg2)

	get := func(u string, h http.Header) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}
	ra, bodyA := get(a.url+PathBundle, nil)
	rb, bodyB := get(b.url+PathBundle, nil)
	if ra.Header.Get("ETag") == "" || ra.Header.Get("ETag") != rb.Header.Get("ETag") {
		t.Fatalf("ETags %q and %q", ra.Header.Get("ETag"), rb.Header.Get("ETag"))
	}
	ba, _ := VerifyBundle(a.pub, bodyA)
	bb, _ := VerifyBundle(b.pub, bodyB)
	if ba.Version != bb.Version {
		t.Fatalf("versions %s and %s", ba.Version, bb.Version)
	}
	// B answers A's ETag with 304.
	if r, _ := get(b.url+PathBundle, http.Header{"If-None-Match": {ra.Header.Get("ETag")}}); r.StatusCode != http.StatusNotModified {
		t.Errorf("B on A's ETag: %s", r.Status)
	}

	_, pageA := get(a.url+PathRevocations, nil)
	pa, err := verifyRevocations(a.pub, pageA)
	if err != nil || pa.Next != 1 {
		t.Fatalf("A's list: %+v %v", pa, err)
	}
	AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-2", Reason: "r"})
	q := url.Values{"since": {"1"}, "head": {pa.Head}, "wait": {"5"}}
	_, pageB := get(b.url+PathRevocations+"?"+q.Encode(), nil)
	pb, err := verifyRevocations(b.pub, pageB)
	if err != nil {
		t.Fatal(err)
	}
	if pb.From != 1 || pb.Prefix != pa.Head || len(pb.Entries) != 1 || pb.Entries[0].TokenID != "tok-2" {
		t.Errorf("B's page after A's list: %+v, want tok-2 alone from 1", pb)
	}
	// A head that is not a prefix of the list gets the whole list.
	q.Set("head", revocationChainStart)
	q.Del("wait")
	_, whole := get(b.url+PathRevocations+"?"+q.Encode(), nil)
	if pw, _ := verifyRevocations(b.pub, whole); pw == nil || pw.From != 0 || pw.Next != 2 {
		t.Errorf("unknown head: %+v, want the whole list", pw)
	}
}

// A client with several urls moves to the next when one dies, moves nothing it holds (no bundle
// re-adopted, no revocation fetched twice), keeps receiving changes, and comes back to the first.
func TestClientFailsOverAndBack(t *testing.T) {
	t.Parallel()
	cfg, tlsDir := tlsAuthorityFiles(t, 60)
	a := startAuthority(t, cfg)
	b := startAuthority(t, cfg)
	cc := sidecarConfig(t, cfg, tlsDir, "s1", []string{a.url, b.url}, true, false)
	log, logs := logBuffer(t)
	c, adopted, _ := startClientConfig(t, cc, log)
	c.ep.setFailback(500 * time.Millisecond)
	<-c.Ready()
	AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-a", Reason: "r"})
	eventually(t, 3*time.Second, "tok-a via A", func() bool { return c.Revoked("tok-a") })
	if st := c.Status(); st.URL != a.url || st.Failovers != 0 {
		t.Fatalf("before the failure: %+v", st)
	}

	a.stop()
	eventually(t, 3*time.Second, "failover to B", func() bool { return c.Status().URL == b.url })
	AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-b", Reason: "r"})
	eventually(t, 3*time.Second, "tok-b via B", func() bool { return c.Revoked("tok-b") })
	edited := strings.Replace(guidePolicy, `"termbin.com"`, `"termbin.com" || resource.host == "ix.io"`, 1)
	editPolicy(t, c, cfg, "claude-code.cedar", edited)
	if n := len(*adopted); n != 2 {
		t.Errorf("adopted %d bundles, want 2 (the first and the edit): moving to B re-applied one", n)
	}
	if n := strings.Count(logs.String(), `"token_id":"tok-a"`); n != 1 {
		t.Errorf("tok-a received %d times, want once:\n%s", n, logs.String())
	}

	// A comes back on its address; the client returns to it after the failback delay.
	a2 := startAuthorityAt(t, cfg, strings.TrimPrefix(a.url, "https://"))
	eventually(t, 5*time.Second, "back on A", func() bool { return c.Status().URL == a2.url })
	b.stop()
	AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-c", Reason: "r"})
	eventually(t, 3*time.Second, "tok-c via A again", func() bool { return c.Revoked("tok-c") })
	st := c.Status()
	if st.Stale || st.Failovers < 1 || st.Rejections[RejectReplayed]+st.Rejections[RejectOutOfOrder] != 0 {
		t.Errorf("after the round trip: %+v", st)
	}
	if !strings.Contains(logs.String(), "failing over to the next authority url") || !strings.Contains(logs.String(), "trying the first authority url again") {
		t.Errorf("failover and failback not logged:\n%s", logs.String())
	}
}

// startAuthorityAt is startAuthority on a given address.
func startAuthorityAt(t *testing.T, cfg Config, addr string) *testAuthority {
	t.Helper()
	cfg.ListenAddr = addr
	return startAuthority(t, cfg)
}

func TestClockSkewIsADuration(t *testing.T) {
	for _, tc := range []struct {
		text string
		want time.Duration
		err  string
	}{
		{``, 0, ""},
		{`clock_skew = "30s"`, 30 * time.Second, ""},
		{`clock_skew = 30`, 0, "has no unit"},
	} {
		cfg := DefaultClientConfig()
		err := decodeStrict("firma.toml", []byte(tc.text), &cfg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want %q", tc.text, err, tc.err)
			}
			continue
		}
		if err != nil || cfg.ClockSkew() != tc.want {
			t.Errorf("%s: %s %v, want %s", tc.text, cfg.ClockSkew(), err, tc.want)
		}
	}
	cfg := DefaultClientConfig()
	if err := decodeStrict("firma.toml", []byte(`clock_skew_seconds = 30`), &cfg); err == nil || !strings.Contains(err.Error(), "clock_skew_seconds") {
		t.Errorf("the old key: %v", err)
	}
}

func TestClientConfigPaths(t *testing.T) {
	c := ClientConfig{URL: "https://a:1", PublicKeyPath: "k.pub", CacheDir: "cache", CAFile: "ca.crt",
		ClientCertFile: "s.crt", ClientKeyFile: "s.key", TokenFile: "s.token"}
	if got := c.HiddenPaths(); !slices.Equal(got, []string{"s.token", "s.key", "cache"}) {
		t.Errorf("hidden %v", got)
	}
	if got := c.ProtectedPaths(); !slices.Equal(got, []string{"k.pub", "ca.crt", "s.crt"}) {
		t.Errorf("protected %v", got)
	}
}

// A sidecar of an earlier version (it sends the epoch of its last page, and follows only pages
// from 0 or pages of the same epoch) is answered with whole lists, which it can follow: it waits
// while nothing changes and gets everything when something does.
func TestRevocationsForEarlierSidecars(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-1"})
	a := startAuthority(t, cfg)
	page := func(q url.Values) (*revocationClaims, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := http.Get(a.url + PathRevocations + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		rc, err := verifyRevocations(a.pub, string(body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		return rc, time.Since(start)
	}
	first, _ := page(url.Values{}) // the earlier client's first poll: no parameters
	if first.From != 0 || first.Next != 1 || first.Epoch == "" {
		t.Fatalf("first page %+v", first)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-2"})
	}()
	next, took := page(url.Values{"since": {"1"}, "epoch": {first.Epoch}, "wait": {"10"}})
	if took < 250*time.Millisecond || next.From != 0 || next.Next != 2 || next.Epoch == first.Epoch {
		t.Errorf("after waiting %s: %+v, want the whole list of 2 under a new epoch", took, next)
	}
	if stale, took := page(url.Values{"since": {"2"}, "epoch": {"unknown"}, "wait": {"10"}}); stale.From != 0 || took > 5*time.Second {
		t.Errorf("unknown epoch: %+v after %s, want the whole list at once", stale, took)
	}
}

// Behind a load balancer that sends each request to the other replica, a sidecar never notices:
// nothing is re-adopted, no revocation arrives twice, nothing is rejected.
func TestClientBehindRoundRobinBalancer(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)
	b := startAuthority(t, cfg)
	var n atomic.Int64
	backends := []*url.URL{mustURL(t, a.url), mustURL(t, b.url)}
	lb := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(backends[n.Add(1)%2])
	}}
	cc := DefaultClientConfig()
	cc.URL, cc.PublicKeyPath, cc.CacheDir = serveLoopback(t, lb), PublicKeyPath(cfg.KeyFile), t.TempDir()
	log, logs := logBuffer(t)
	c, adopted, _ := startClientConfig(t, cc, log)
	<-c.Ready()
	for i := range 3 {
		id := fmt.Sprintf("tok-%d", i)
		AppendRevocation(cfg.RevocationFile, Revocation{TokenID: id})
		eventually(t, 3*time.Second, id, func() bool { return c.Revoked(id) })
		editPolicy(t, c, cfg, "edit.cedar", fmt.Sprintf("// edit %d\n", i))
	}
	if got := len(*adopted); got != 4 {
		t.Errorf("adopted %d bundles, want 4 (the first and three edits)", got)
	}
	for i := range 3 {
		if k := strings.Count(logs.String(), fmt.Sprintf(`"token_id":"tok-%d"`, i)); k != 1 {
			t.Errorf("tok-%d received %d times", i, k)
		}
	}
	if st := c.Status(); len(st.Rejections) != 0 || len(st.PollErrors) != 0 || n.Load() < 8 {
		t.Errorf("status %+v after %d requests through the balancer", st, n.Load())
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// A first url that never answers costs one failed dial, not a backoff: the client is ready from
// the second at once.
func TestClientStartsOnTheNextURL(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)
	dead := "http://127.0.0.1:" + fmt.Sprint(freePort(t))
	cc := DefaultClientConfig()
	cc.URLs, cc.PublicKeyPath, cc.CacheDir = []string{dead, a.url}, PublicKeyPath(cfg.KeyFile), t.TempDir()
	c, _, _ := startClientConfig(t, cc, testLogger(t))
	select {
	case <-c.Ready():
	case <-time.After(5 * time.Second):
		t.Fatalf("not ready from the second url: %+v", c.Status())
	}
	if st := c.Status(); st.URL != a.url || st.Failovers < 1 || st.PollErrors[PollUnreachable] < 1 {
		t.Errorf("status %+v", st)
	}
}

// editPolicy writes name in the policy dir and waits for c to hold it.
func editPolicy(t *testing.T, c *Client, cfg Config, name, text string) {
	t.Helper()
	os.WriteFile(filepath.Join(cfg.PolicyDir, name), []byte(text), 0o644)
	eventually(t, 3*time.Second, "the edit of "+name, func() bool {
		got, _ := c.Bundle()
		return string(got.Files[name]) == text
	})
}

// serveLoopback serves h on a loopback port until the test ends and returns its http:// URL.
func serveLoopback(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}
