package authority

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCapabilityRoundTrip(t *testing.T) {
	key, pub, _ := newTestKey(t)
	now := time.Now()
	want := testClaims(now, 8*time.Hour)
	want.ActionSet = []string{"communication.external.send", "model.inference.chat"}
	raw := signTest(t, key, want)
	if !strings.HasPrefix(raw, "v4.public.") {
		t.Fatalf("token %q is not v4.public", raw)
	}
	got, err := VerifyCapability(pub, raw, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.TokenID != want.TokenID || got.AgentID != want.AgentID || got.SessionID != want.SessionID ||
		!slices.Equal(got.ActionSet, want.ActionSet) || got.ResourceScope != want.ResourceScope ||
		!got.IssuedAt.Equal(want.IssuedAt) || !got.NotBefore.Equal(want.NotBefore) || !got.Expires.Equal(want.Expires) {
		t.Fatalf("claims changed in the round trip:\n got %+v\nwant %+v", got, want)
	}
	if got.Issuer != IssuerName {
		t.Errorf("iss %q", got.Issuer)
	}
}

func TestCapabilityTampered(t *testing.T) {
	key, pub, _ := newTestKey(t)
	now := time.Now()
	raw := signTest(t, key, testClaims(now, time.Hour))

	// Rewrite the payload: same signature, agent_id changed.
	body := strings.TrimPrefix(raw, "v4.public.")
	b, err := base64.RawURLEncoding.DecodeString(strings.SplitN(body, ".", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Replace(string(b), `"agent_id":"claude-code"`, `"agent_id":"claude-codf"`, 1)
	if msg == string(b) {
		t.Fatal("test did not find the claim to tamper with")
	}
	parts := strings.SplitN(body, ".", 2)
	parts[0] = base64.RawURLEncoding.EncodeToString([]byte(msg))
	tampered := "v4.public." + strings.Join(parts, ".")
	if _, err := VerifyCapability(pub, tampered, now, 0); !errors.Is(err, ErrCapabilityInvalid) {
		t.Errorf("tampered payload: %v, want ErrCapabilityInvalid", err)
	}

	// Flip one bit of the signature.
	sig := []byte(raw)
	i := strings.LastIndex(raw, ".") - 3
	if sig[i] == 'A' {
		sig[i] = 'B'
	} else {
		sig[i] = 'A'
	}
	if _, err := VerifyCapability(pub, string(sig), now, 0); !errors.Is(err, ErrCapabilityInvalid) {
		t.Errorf("flipped signature: %v, want ErrCapabilityInvalid", err)
	}

	// Change the (authenticated) footer.
	foot := base64.RawURLEncoding.EncodeToString([]byte(`{"kid":"0000000000000000"}`))
	refooted := raw[:strings.LastIndex(raw, ".")+1] + foot
	if _, err := VerifyCapability(pub, refooted, now, 0); !errors.Is(err, ErrCapabilityInvalid) {
		t.Errorf("changed footer: %v, want ErrCapabilityInvalid", err)
	}

	for _, junk := range []string{"", "v4.public.", "v4.local." + body, "v2.public." + body, "garbage"} {
		if _, err := VerifyCapability(pub, junk, now, 0); !errors.Is(err, ErrCapabilityInvalid) {
			t.Errorf("%q: %v, want ErrCapabilityInvalid", junk, err)
		}
	}
}

func TestCapabilityWrongKey(t *testing.T) {
	key, _, _ := newTestKey(t)
	_, otherPub, _ := newTestKey(t)
	now := time.Now()
	raw := signTest(t, key, testClaims(now, time.Hour))
	if _, err := VerifyCapability(otherPub, raw, now, 0); !errors.Is(err, ErrCapabilityInvalid) {
		t.Fatalf("wrong key: %v, want ErrCapabilityInvalid", err)
	}
}

// A bundle or revocation list signed by the same key must never pass as a capability.
func TestCapabilityImplicitAssertionSeparatesPurposes(t *testing.T) {
	key, pub, _ := newTestKey(t)
	c := testClaims(time.Now(), time.Hour)
	asBundle, err := signMessage(key, c, implicitBundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCapability(pub, asBundle); !errors.Is(err, ErrCapabilityInvalid) {
		t.Fatalf("capability claims signed as a bundle: %v, want ErrCapabilityInvalid", err)
	}
}

func TestCapabilityTimeWindow(t *testing.T) {
	key, pub, _ := newTestKey(t)
	issued := time.Now().Truncate(time.Second)
	raw := signTest(t, key, testClaims(issued, time.Hour))
	skew := 30 * time.Second
	cases := []struct {
		name string
		now  time.Time
		want error
	}{
		{"at issue", issued, nil},
		{"just before expiry", issued.Add(time.Hour - time.Second), nil},
		{"expired within skew", issued.Add(time.Hour + 10*time.Second), nil},
		{"expired", issued.Add(time.Hour + skew), ErrCapabilityExpired},
		{"long expired", issued.Add(48 * time.Hour), ErrCapabilityExpired},
		{"not yet valid within skew", issued.Add(-10 * time.Second), nil},
		{"not yet valid", issued.Add(-skew - time.Second), ErrCapabilityNotYetValid},
	}
	for _, tc := range cases {
		_, err := VerifyCapability(pub, raw, tc.now, skew)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// Zero skew: expiry is exact.
	if _, err := VerifyCapability(pub, raw, issued.Add(time.Hour), 0); !errors.Is(err, ErrCapabilityExpired) {
		t.Errorf("at exp with no skew: %v, want ErrCapabilityExpired", err)
	}
}

func TestSignCapabilityRefusesBadClaims(t *testing.T) {
	key, _, _ := newTestKey(t)
	now := time.Now()
	bad := map[string]func(*Claims){
		"no agent":         func(c *Claims) { c.AgentID = "" },
		"agent with space": func(c *Claims) { c.AgentID = "claude code" },
		"no actions":       func(c *Claims) { c.ActionSet = nil },
		"bad scope":        func(c *Claims) { c.ResourceScope = "a b" },
		"exp before nbf":   func(c *Claims) { c.Expires = c.NotBefore.Add(-time.Second) },
	}
	for name, mutate := range bad {
		c := testClaims(now, time.Hour)
		mutate(&c)
		if _, err := SignCapability(key, c); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

func TestCapabilityFileRoundTripAndMirrors(t *testing.T) {
	key, pub, _ := newTestKey(t)
	c := testClaims(time.Now(), time.Hour)
	raw := signTest(t, key, c)
	c.Issuer = IssuerName
	path := filepath.Join(t.TempDir(), "caps", "capability-claude.toml")
	if err := WriteCapabilityFile(path, NewCapabilityFile(raw, &c)); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("capability file mode %#o, want 0600", st.Mode().Perm())
	}
	got, gotRaw, err := LoadCapabilityFile(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	if gotRaw != raw || got.TokenID != c.TokenID {
		t.Fatal("loaded a different token")
	}
	text, _ := os.ReadFile(path)
	for _, want := range []string{"raw_token = ", "agent_id = 'claude-code'", "resource_scope = '*.anthropic.com*'", "expires_at = "} {
		if !strings.Contains(string(text), want) {
			t.Errorf("capability file lacks %q:\n%s", want, text)
		}
	}

	// A mirror edited by hand is an error: the file no longer says what the token says.
	edited := strings.Replace(string(text), "agent_id = 'claude-code'", "agent_id = 'codex'", 1)
	os.WriteFile(path, []byte(edited), 0o600)
	if _, _, err := LoadCapabilityFile(path, pub); !errors.Is(err, ErrCapabilityInvalid) || !strings.Contains(err.Error(), "agent_id") {
		t.Errorf("edited mirror: %v", err)
	}

	// raw_token alone is enough.
	os.WriteFile(path, []byte("raw_token = '"+raw+"'\n"), 0o600)
	if _, _, err := LoadCapabilityFile(path, pub); err != nil {
		t.Errorf("raw_token only: %v", err)
	}

	// Unknown keys and a missing token are errors naming the file.
	os.WriteFile(path, []byte("raw_token = '"+raw+"'\nextra = 1\n"), 0o600)
	if _, _, err := LoadCapabilityFile(path, pub); err == nil || !strings.Contains(err.Error(), path+":2") {
		t.Errorf("unknown key: %v", err)
	}
	os.WriteFile(path, []byte("agent_id = 'claude-code'\n"), 0o600)
	if _, _, err := LoadCapabilityFile(path, pub); err == nil || !strings.Contains(err.Error(), "raw_token") {
		t.Errorf("no raw_token: %v", err)
	}
}
