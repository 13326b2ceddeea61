package authority

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/openfirma/firma/internal/testutil"
	"github.com/rs/zerolog"
)

// guidePolicy is examples/policies/claude-code.cedar from the guide.
const guidePolicy = `// claude-code: a local coding agent.
//
// Mission: read project files, generate code, talk to Anthropic only.
// Must not reach paste services, package registries, or anything else.
// Permit talking to Anthropic for the LLM call.
permit (
principal == Firma::Agent::"claude-code",
action == Firma::Action::"communication.external.send",
resource
) when {
resource has "host" &&
(resource.host like "*.anthropic.com" ||
resource.host like "*.claude.com")
};
// Hard rule: known exfiltration destinations are off-limits regardless.
forbid (
principal,
action == Firma::Action::"communication.external.send",
resource
) when {
resource has "host" &&
(resource.host == "paste.rs" ||
resource.host == "transfer.sh" ||
resource.host == "0x0.st" ||
resource.host == "termbin.com")
};
`

// testAuthority is a running in-process authority.
type testAuthority struct {
	cfg  Config
	srv  *Server
	pub  ed25519.PublicKey
	url  string
	stop func()
}

// authorityFiles lays out an [authority] config like the guide's under a temp dir.
func authorityFiles(t *testing.T, bundleTTL int64) Config {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.PolicyDir = filepath.Join(dir, "policies")
	cfg.IssuancePolicyDir = filepath.Join(dir, "issuance")
	cfg.RevocationFile = filepath.Join(dir, "revocations.txt")
	cfg.KeyFile = filepath.Join(dir, "firma-authority.key")
	cfg.BundleTTLSeconds = bundleTTL
	for _, d := range []string{cfg.PolicyDir, cfg.IssuancePolicyDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(cfg.PolicyDir, "claude-code.cedar"), []byte(guidePolicy), 0o644)
	os.WriteFile(filepath.Join(cfg.IssuancePolicyDir, "issuance.cedar"), []byte(guideIssuance), 0o644)
	os.WriteFile(cfg.RevocationFile, nil, 0o644)
	if _, err := GenerateKey(cfg.KeyFile); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startAuthority(t *testing.T, cfg Config) *testAuthority {
	t.Helper()
	return startAuthorityLog(t, cfg, testLogger(t))
}

// startAuthorityLog is startAuthority logging to log.
func startAuthorityLog(t *testing.T, cfg Config, log zerolog.Logger) *testAuthority {
	t.Helper()
	key, err := LoadPrivateKey(cfg.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, key, log.With().Str("side", "authority").Logger())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	scheme := "http://"
	if cfg.TLS() {
		scheme = "https://"
	}
	ta := &testAuthority{cfg: cfg, srv: srv, pub: srv.PublicKey(), url: scheme + ln.Addr().String()}
	var stopped atomic.Bool
	ta.stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop within 10 s")
		}
	}
	t.Cleanup(ta.stop)
	return ta
}

// startClient runs a Client against url; adopted records every bundle version onBundle accepted.
func startClient(t *testing.T, url, pubPath, cacheDir string) (*Client, *[]string, func()) {
	t.Helper()
	cfg := DefaultClientConfig()
	cfg.URL = url
	cfg.PublicKeyPath = pubPath
	cfg.CacheDir = cacheDir
	return startClientConfig(t, cfg, testLogger(t))
}

// startClientConfig runs a Client with cfg, logging to log.
func startClientConfig(t *testing.T, cfg ClientConfig, log zerolog.Logger) (*Client, *[]string, func()) {
	t.Helper()
	var adopted []string
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	c, err := NewClient(cfg, log.With().Str("side", "client").Logger(), func(b Bundle) error {
		<-mu
		adopted = append(adopted, b.Version)
		mu <- struct{}{}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return c, &adopted, stop
}

func TestServerServesSignedBundle(t *testing.T) {
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)

	resp, err := http.Get(a.url + PathBundle)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %s: %s", resp.Status, body.String())
	}
	b, err := VerifyBundle(a.pub, body.String())
	if err != nil {
		t.Fatal(err)
	}
	if string(b.Files["claude-code.cedar"]) != guidePolicy || len(b.Files) != 1 {
		t.Errorf("bundle files %v", b.Files)
	}
	if b.SchemaName != "firma.cedarschema" || !bytes.Contains(b.Schema, []byte("namespace Firma")) {
		t.Errorf("bundle schema %q", b.SchemaName)
	}
	if b.TTL != 60*time.Second {
		t.Errorf("bundle TTL %s", b.TTL)
	}
	if got := resp.Header.Get("ETag"); got != `"`+b.Version+`"` {
		t.Errorf("ETag %q, want %q", got, b.Version)
	}

	// If-None-Match with the current version: 304 with a signed heartbeat for that version.
	req, _ := http.NewRequest("GET", a.url+PathBundle, nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusNotModified {
		t.Fatalf("status %s, want 304", resp2.Status)
	}
	fc, err := verifyFreshness(a.pub, resp2.Header.Get(HeaderFreshness))
	if err != nil || fc.Version != b.Version {
		t.Fatalf("heartbeat %+v, %v", fc, err)
	}
	// A heartbeat is not a bundle, and a bundle is not a capability.
	if _, err := VerifyBundle(a.pub, resp2.Header.Get(HeaderFreshness)); err == nil {
		t.Error("heartbeat verified as a bundle")
	}
	if _, err := ParseCapability(a.pub, body.String()); err == nil {
		t.Error("bundle verified as a capability")
	}

	// Health.
	hr, err := http.Get(a.url + PathHealth)
	if err != nil {
		t.Fatal(err)
	}
	var health map[string]any
	json.NewDecoder(hr.Body).Decode(&health)
	hr.Body.Close()
	if health["status"] != "ok" || health["version"] != b.Version {
		t.Errorf("healthz %v", health)
	}
}

func TestNewServerRefusesBrokenPolicyDir(t *testing.T) {
	cfg := authorityFiles(t, 60)
	os.WriteFile(filepath.Join(cfg.PolicyDir, "broken.cedar"), []byte("permit (\nprincipal,\naction == Firma::Action::\"communication.external.sendd\",\nresource\n);\n"), 0o644)
	key, _ := LoadPrivateKey(cfg.KeyFile)
	_, err := NewServer(cfg, key, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "broken.cedar:") {
		t.Fatalf("NewServer: %v, want an error naming broken.cedar and its line", err)
	}
}

func TestClientFollowsAuthority(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)
	client, adopted, _ := startClient(t, a.url, PublicKeyPath(cfg.KeyFile), t.TempDir())
	select {
	case <-client.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("client not ready within 5 s")
	}
	first := a.srv.Bundle().Version
	b, ok := client.Bundle()
	if !ok || b.Version != first {
		t.Fatalf("client bundle %q, server %q", b.Version, first)
	}
	eventually(t, 2*time.Second, "fresh", func() bool { return !client.Stale() })

	// A policy edit reaches the client within 2 s (long poll + fsnotify).
	edited := strings.Replace(guidePolicy, `"termbin.com"`, `"termbin.com" || resource.host == "ix.io"`, 1)
	os.WriteFile(filepath.Join(cfg.PolicyDir, "claude-code.cedar"), []byte(edited), 0o644)
	took := eventually(t, 2*time.Second, "edited bundle at the client", func() bool {
		b, _ := client.Bundle()
		return b.Version != first
	})
	t.Logf("policy edit reached the client in %s", took)
	b, _ = client.Bundle()
	if string(b.Files["claude-code.cedar"]) != edited {
		t.Fatal("client has a new version but not the edited file")
	}
	second := b.Version

	// A broken edit keeps the last good bundle on the server, so the client sees nothing new.
	os.WriteFile(filepath.Join(cfg.PolicyDir, "oops.cedar"), []byte("permit (principal, action, resource"), 0o644)
	time.Sleep(500 * time.Millisecond)
	if v := a.srv.Bundle().Version; v != second {
		t.Fatalf("server adopted a broken edit (version %s)", v)
	}
	if b, _ := client.Bundle(); b.Version != second {
		t.Fatal("client moved off the last good bundle")
	}
	os.Remove(filepath.Join(cfg.PolicyDir, "oops.cedar"))

	// A revocation reaches the client within 2 s.
	if err := AppendRevocation(cfg.RevocationFile, Revocation{TokenID: "tok-revoked-1", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, 2*time.Second, "revocation at the client", func() bool { return client.Revoked("tok-revoked-1") })
	t.Logf("revocation reached the client in %s", took)
	if client.Revoked("tok-other") {
		t.Error("unrelated token revoked")
	}
	// An edit that is not an append (new epoch) is refetched whole.
	os.WriteFile(cfg.RevocationFile, []byte("tok-revoked-2\n"), 0o644)
	eventually(t, 2*time.Second, "rewritten revocation list at the client", func() bool {
		return client.Revoked("tok-revoked-2") && !client.Revoked("tok-revoked-1")
	})
	if n := len(*adopted); n != 2 {
		t.Errorf("onBundle adopted %d bundles (%v), want 2", n, *adopted)
	}
}

// Stopping the authority: the client keeps its bundle until the TTL passes without contact, then
// reports stale; a restarted client with the authority still down restores the same view from its
// cache, deadline included.
func TestClientStaleAfterTTL(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	cfg := authorityFiles(t, int64(ttl/time.Second))
	a := startAuthority(t, cfg)
	cache := t.TempDir()
	client, _, stopClient := startClient(t, a.url, PublicKeyPath(cfg.KeyFile), cache)
	<-client.Ready()
	eventually(t, 2*time.Second, "fresh", func() bool { return !client.Stale() })
	// Let a heartbeat or two arrive, so that freshness is not just the bundle's signing time.
	time.Sleep(ttl / 2)
	a.stop()
	stoppedAt := time.Now()
	st := client.Status()
	if st.Stale {
		t.Fatal("stale right after the authority stopped")
	}
	if st.Deadline.Before(stoppedAt) || st.Deadline.After(stoppedAt.Add(ttl)) {
		t.Errorf("deadline %s not within the TTL after the stop (%s)", st.Deadline, stoppedAt)
	}
	stopClient()

	// Restart the client with the authority down: the cache restores bundle and deadline.
	again, _, _ := startClient(t, a.url, PublicKeyPath(cfg.KeyFile), cache)
	select {
	case <-again.Ready():
	default:
		t.Fatal("restarted client has no bundle from its cache")
	}
	st2 := again.Status()
	if st2.Version != st.Version || st2.Stale {
		t.Fatalf("restarted client: %+v, want version %s and fresh", st2, st.Version)
	}
	if d := st2.Deadline.Sub(st.Deadline); d < -time.Second || d > time.Second {
		t.Errorf("restarted client's deadline %s differs from %s", st2.Deadline, st.Deadline)
	}
	went := eventually(t, ttl+2*time.Second, "stale after the TTL", again.Stale)
	if late := time.Since(st.Deadline); late < 0 || late > 500*time.Millisecond {
		t.Errorf("stale at %s relative to the deadline", late)
	}
	t.Logf("stale %s after the authority stopped (TTL %s)", time.Since(stoppedAt), ttl)
	_ = went
}

func TestClientRejectsForeignAuthority(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)
	_, _, otherPubDir := newTestKey(t)
	client, adopted, _ := startClient(t, a.url, PublicKeyPath(otherPubDir), t.TempDir())
	select {
	case <-client.Ready():
		t.Fatal("client adopted a bundle signed by another key")
	case <-time.After(time.Second):
	}
	if !client.Stale() || len(*adopted) != 0 {
		t.Fatal("client not stale without a verified bundle")
	}
}

func TestClientCacheTamperIgnored(t *testing.T) {
	t.Parallel()
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)
	cache := t.TempDir()
	client, _, stopClient := startClient(t, a.url, PublicKeyPath(cfg.KeyFile), cache)
	<-client.Ready()
	eventually(t, 2*time.Second, "fresh", func() bool { return !client.Stale() })
	stopClient()
	a.stop()

	data, err := os.ReadFile(filepath.Join(cache, cacheBundle))
	if err != nil {
		t.Fatal(err)
	}
	// Flip a character in the payload.
	i := len("v4.public.") + 40
	data[i] ^= 1
	os.WriteFile(filepath.Join(cache, cacheBundle), data, 0o600)
	again, _, _ := startClient(t, a.url, PublicKeyPath(cfg.KeyFile), cache)
	select {
	case <-again.Ready():
		t.Fatal("client adopted a tampered cached bundle")
	default:
	}
	if !again.Stale() {
		t.Fatal("client without a bundle is not stale")
	}
}

func TestIssueOverHTTPTrustsOnlyLocalRootOrSelf(t *testing.T) {
	cfg := authorityFiles(t, 60)
	a := startAuthority(t, cfg)
	body := `{"agent_id":"claude-code","session_id":"s-1","actions":["communication.external.send"],"resource_scope":"*.anthropic.com*","ttl_seconds":999999}`

	// This process: root, or the authority's own user (the test runs both sides as one user).
	resp, err := http.Post(a.url+PathCapabilities, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var out IssueAPIResponse
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %s", resp.Status)
	}
	c, err := VerifyCapability(a.pub, out.RawToken, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !out.TTLClamped || c.Expires.Sub(c.IssuedAt) != cfg.MaxTTL() || !strings.Contains(out.CapabilityFile, out.RawToken) {
		t.Errorf("response %+v", out)
	}

	// Issuance policy still applies.
	denied := strings.Replace(body, "claude-code", "codex", 1)
	resp, err = http.Post(a.url+PathCapabilities, "application/json", strings.NewReader(denied))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("denied issuance: status %s, want 403", resp.Status)
	}

	// Another local user is refused although it can connect.
	testutil.RequireRoot(t)
	curl := testutil.RequireTool(t, "curl")
	cmd := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"--data", body, a.url+PathCapabilities)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	got, err := cmd.Output()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatal(err)
	}
	if string(got) != "403" {
		t.Fatalf("uid 65534: status %q, want 403", got)
	}
}
