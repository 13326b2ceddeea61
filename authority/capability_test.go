package authority

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/policies"
)

// writeCap signs c and writes it as a capability file at path.
func writeCap(t *testing.T, key Signer, path string, c Claims) {
	t.Helper()
	raw := signTest(t, key, c)
	c.Issuer = IssuerName
	if err := WriteCapabilityFile(path, NewCapabilityFile(raw, &c)); err != nil {
		t.Fatal(err)
	}
}

// fakeRevocations is a RevocationChecker that can also go stale.
type fakeRevocations struct {
	ids   map[string]bool
	stale bool
}

func (f *fakeRevocations) Revoked(id string) bool { return f.ids[id] }
func (f *fakeRevocations) Stale() bool            { return f.stale }

func openTestCapability(t *testing.T, pub ed25519.PublicKey, revs RevocationChecker, path string) *Capability {
	t.Helper()
	store, err := NewCapabilityStore(pub, revs, 30*time.Second, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	c, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStage1(t *testing.T) {
	key, pub, _ := newTestKey(t)
	now := time.Now()
	claims := testClaims(now, time.Hour)
	path := filepath.Join(t.TempDir(), "capability-claude.toml")
	writeCap(t, key, path, claims)
	revs := &fakeRevocations{ids: map[string]bool{}}
	capability := openTestCapability(t, pub, revs, path)
	var _ policies.Capability = capability

	const send = "communication.external.send"
	cases := []struct {
		name                    string
		agent, action, resource string
		at                      time.Time
		setup                   func()
		want                    error
	}{
		{"allowed", "claude-code", send, "api.anthropic.com/v1/messages", now, nil, nil},
		{"allowed connection level", "claude-code", send, "api.anthropic.com", now, nil, nil},
		{"agent mismatch", "codex", send, "api.anthropic.com/v1/messages", now, nil, ErrCapabilityMismatch},
		{"action not granted", "claude-code", "model.inference.chat", "api.anthropic.com/v1/messages", now, nil, ErrCapabilityScope},
		{"resource out of scope", "claude-code", send, "anthropic.com.evil.io/v1", now, nil, ErrCapabilityScope},
		{"expired", "claude-code", send, "api.anthropic.com", now.Add(2 * time.Hour), nil, ErrCapabilityExpired},
		{"not yet valid", "claude-code", send, "api.anthropic.com", now.Add(-time.Hour), nil, ErrCapabilityNotYetValid},
		{"revocations stale", "claude-code", send, "api.anthropic.com", now, func() { revs.stale = true }, ErrStale},
		{"revoked", "claude-code", send, "api.anthropic.com", now, func() { revs.stale = false; revs.ids[claims.TokenID] = true }, ErrCapabilityRevoked},
	}
	for _, tc := range cases {
		if tc.setup != nil {
			tc.setup()
		}
		id, err := capability.Authorize(tc.agent, tc.action, tc.resource, tc.at)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			continue
		}
		if err != nil && !strings.HasPrefix(err.Error(), tc.want.Error()) {
			t.Errorf("%s: reason %q does not start with %q", tc.name, err, tc.want)
		}
		if id != claims.TokenID {
			t.Errorf("%s: token id %q, want %q", tc.name, id, claims.TokenID)
		}
	}
}

func TestCapabilityStoreOpenRefusesBadFiles(t *testing.T) {
	key, pub, _ := newTestKey(t)
	other, _, _ := newTestKey(t)
	dir := t.TempDir()
	store, err := NewCapabilityStore(pub, NoRevocations, 0, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Open(filepath.Join(dir, "missing.toml")); err == nil {
		t.Error("opened a missing file")
	}
	wrongKey := filepath.Join(dir, "wrong-key.toml")
	writeCap(t, other, wrongKey, testClaims(time.Now(), time.Hour))
	if _, err := store.Open(wrongKey); !errors.Is(err, ErrCapabilityInvalid) || !strings.Contains(err.Error(), wrongKey) {
		t.Errorf("token from another key: %v", err)
	}
	good := filepath.Join(dir, "good.toml")
	writeCap(t, key, good, testClaims(time.Now(), time.Hour))
	if _, err := store.Open(good); err != nil {
		t.Error(err)
	}
	if _, err := NewCapabilityStore(pub, nil, 0, testLogger(t)); err == nil {
		t.Error("store without a revocation source")
	}
}

func TestCapabilityHotReload(t *testing.T) {
	t.Parallel()
	key, pub, _ := newTestKey(t)
	now := time.Now()
	path := filepath.Join(t.TempDir(), "capability.toml")
	first := testClaims(now, time.Hour)
	writeCap(t, key, path, first)
	capability := openTestCapability(t, pub, NoRevocations, path)

	// A fresh capability replaces the old one (as `firma authority issue --output` rewrites it).
	second := testClaims(now, time.Hour)
	second.ResourceScope = "api.openai.com*"
	writeCap(t, key, path, second)
	took := eventually(t, 2*time.Second, "new token in force", func() bool { return capability.Claims().TokenID == second.TokenID })
	t.Logf("capability reloaded after %s", took)
	if _, err := capability.Authorize("claude-code", "communication.external.send", "api.openai.com/v1", now); err != nil {
		t.Errorf("new scope: %v", err)
	}

	// A broken rewrite keeps the token in force.
	os.WriteFile(path, []byte("raw_token = 'v4.public.garbage'\n"), 0o600)
	time.Sleep(4 * watchDebounce)
	if got := capability.Claims().TokenID; got != second.TokenID {
		t.Fatalf("broken rewrite replaced the token (now %q)", got)
	}
	// So does a token signed by someone else.
	other, _, _ := newTestKey(t)
	writeCap(t, other, path, testClaims(now, time.Hour))
	time.Sleep(4 * watchDebounce)
	if got := capability.Claims().TokenID; got != second.TokenID {
		t.Fatalf("foreign token replaced the token (now %q)", got)
	}
}

func TestMissingCapabilityDenies(t *testing.T) {
	var c policies.Capability = MissingCapability{}
	if _, err := c.Authorize("claude-code", "communication.external.send", "api.anthropic.com", time.Now()); !errors.Is(err, ErrCapabilityMissing) {
		t.Fatalf("%v, want ErrCapabilityMissing", err)
	}
}

// `firma run` registers through Open: a revoked capability is refused there, before anything is
// launched, rather than launched and then denied on every request.
func TestCapabilityStoreOpenRefusesRevoked(t *testing.T) {
	key, pub, _ := newTestKey(t)
	claims := testClaims(time.Now(), time.Hour)
	path := filepath.Join(t.TempDir(), "capability.toml")
	writeCap(t, key, path, claims)
	revs := &fakeRevocations{ids: map[string]bool{claims.TokenID: true}}
	store, err := NewCapabilityStore(pub, revs, 0, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, err = store.Open(path)
	if !errors.Is(err, ErrCapabilityRevoked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), claims.TokenID) {
		t.Fatalf("Open of a revoked capability: %v", err)
	}
	delete(revs.ids, claims.TokenID)
	if _, err := store.Open(path); err != nil {
		t.Fatalf("Open once no longer revoked: %v", err)
	}

	// The same through a revocation file, as a sidecar without an authority has it.
	revFile := filepath.Join(t.TempDir(), "revocations.txt")
	if err := AppendRevocation(revFile, Revocation{TokenID: claims.TokenID, Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	rf, err := OpenRevocationFile(revFile, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	store2, _ := NewCapabilityStore(pub, rf, 0, testLogger(t))
	defer store2.Close()
	if _, err := store2.Open(path); !errors.Is(err, ErrCapabilityRevoked) {
		t.Fatalf("Open with the id in the revocation file: %v", err)
	}
}

// No clock-skew grace unless configured: a capability is refused from its expiry on.
func TestCapabilityExpiresWithoutGrace(t *testing.T) {
	key, pub, _ := newTestKey(t)
	now := time.Now()
	claims := testClaims(now.Add(-time.Hour), time.Hour) // expired a moment ago (exp is truncated to the second)
	path := filepath.Join(t.TempDir(), "capability.toml")
	writeCap(t, key, path, claims)
	cfg := DefaultClientConfig()
	store, err := NewCapabilityStore(pub, NoRevocations, cfg.ClockSkew(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const send = "communication.external.send"
	if _, err := c.Authorize("claude-code", send, "api.anthropic.com/v1", claims.Expires); !errors.Is(err, ErrCapabilityExpired) {
		t.Errorf("at exp with the default skew: %v, want expired", err)
	}
	if _, err := c.Authorize("claude-code", send, "api.anthropic.com/v1", claims.Expires.Add(-time.Millisecond)); err != nil {
		t.Errorf("just before exp: %v", err)
	}
	// With clock_skew = "30s" configured, the old grace is back, and only then.
	skewed, _ := NewCapabilityStore(pub, NoRevocations, 30*time.Second, testLogger(t))
	defer skewed.Close()
	c2, _ := skewed.Open(path)
	if _, err := c2.Authorize("claude-code", send, "api.anthropic.com/v1", claims.Expires.Add(10*time.Second)); err != nil {
		t.Errorf("10 s after exp with clock_skew 30s: %v", err)
	}
}
