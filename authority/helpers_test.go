package authority

import (
	"crypto/ed25519"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// newTestKey generates an authority key in a temp dir and returns it with its public half.
func newTestKey(tb testing.TB) (*Key, ed25519.PublicKey, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "authority.key")
	pub, err := GenerateKey(path)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := LoadPrivateKey(path)
	if err != nil {
		tb.Fatal(err)
	}
	return key, pub, path
}

// testClaims are valid claims for claude-code, issued at now for ttl.
func testClaims(now time.Time, ttl time.Duration) Claims {
	now = now.UTC().Truncate(time.Second)
	return Claims{
		TokenID:       NewTokenID(),
		AgentID:       "claude-code",
		SessionID:     "5f0c9a0e-3d1b-4d59-9a51-0f7d2c6b8e11",
		ActionSet:     []string{"communication.external.send"},
		ResourceScope: "*.anthropic.com*",
		IssuedAt:      now,
		NotBefore:     now,
		Expires:       now.Add(ttl),
	}
}

func signTest(tb testing.TB, key Signer, c Claims) string {
	tb.Helper()
	raw, err := SignCapability(key, c)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// testLogger writes to the test log when -v, else nowhere.
func testLogger(tb testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(tb)).Level(zerolog.DebugLevel)
	}
	return zerolog.New(io.Discard)
}

// eventually polls cond every 10 ms until it holds or timeout passes, and returns how long it took.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			tb.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}
