package authority

import (
	"crypto/ed25519"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// fuzzKey is a fixed authority key, so that the committed seed corpus holds tokens that verify.
func fuzzKey() *Key {
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "firma fuzz authority key, fixed")
	return &Key{priv: ed25519.NewKeyFromSeed(seed)}
}

// fuzzClaims are the claims of the corpus's valid token.
func fuzzClaims() Claims {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return Claims{TokenID: "8a3c0e52-6a2e-4c57-9d1e-2f0b7c4d5e6f", AgentID: "claude-code", SessionID: "s-1",
		ActionSet: []string{"communication.external.send"}, ResourceScope: "*.anthropic.com*",
		IssuedAt: at, NotBefore: at, Expires: at.Add(8 * time.Hour)}
}

// FuzzParseCapability feeds the capability token parser arbitrary text: it must never panic, every
// refusal must wrap ErrCapabilityInvalid, and whatever it accepts must be valid claims that survive
// the capability file round trip — and verify under no other key, nor as any other kind of signed
// message.
func FuzzParseCapability(f *testing.F) {
	key := fuzzKey()
	pub := key.Public().(ed25519.PublicKey)
	other := append(ed25519.PublicKey(nil), pub...)
	other[0] ^= 1
	if tok, err := SignCapability(key, fuzzClaims()); err == nil {
		f.Add(tok)
	}
	f.Add("v4.public.")
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := ParseCapability(pub, raw)
		if err != nil {
			if !errors.Is(err, ErrCapabilityInvalid) {
				t.Fatalf("error does not wrap ErrCapabilityInvalid: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted invalid claims: %v", err)
		}
		if _, err := ParseCapability(other, raw); err == nil {
			t.Fatal("a token verified under another key")
		}
		var anything map[string]any
		for _, implicit := range [][]byte{implicitBundle, implicitFreshness, implicitRevocation} {
			if err := verifyMessage(pub, raw, implicit, &anything); err == nil {
				t.Fatalf("a capability verified as %q", implicit)
			}
		}
		file := NewCapabilityFile(raw, c)
		data, err := file.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var back CapabilityFile
		if err := decodeStrict("cap.toml", data, &back); err != nil {
			t.Fatalf("the file written for an accepted token does not read back: %v", err)
		}
		if err := back.checkMirrors(c); err != nil {
			t.Fatalf("mirrors disagree with the token they were made from: %v", err)
		}
	})
}

// FuzzCapabilityFile feeds the capability file reader arbitrary TOML: no panic, and a file it
// accepts has a token that verifies and mirrors that agree with it.
func FuzzCapabilityFile(f *testing.F) {
	key := fuzzKey()
	pub := key.Public().(ed25519.PublicKey)
	if tok, err := SignCapability(key, fuzzClaims()); err == nil {
		c := fuzzClaims()
		c.Issuer = IssuerName
		if data, err := NewCapabilityFile(tok, &c).Marshal(); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("raw_token = 'v4.public.x'\nagent_id = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var file CapabilityFile
		if err := decodeStrict("cap.toml", data, &file); err != nil {
			return
		}
		c, err := ParseCapability(pub, file.RawToken)
		if err != nil {
			return
		}
		if err := file.checkMirrors(c); err == nil && file.TokenID != "" && file.TokenID != c.TokenID {
			t.Fatalf("token_id mirror %q passed against %q", file.TokenID, c.TokenID)
		}
	})
}

// FuzzParseTokens feeds the tokens file parser arbitrary text: no panic, and what it accepts has
// valid, distinct names.
func FuzzParseTokens(f *testing.F) {
	f.Add([]byte("[[sidecar]]\nname = \"web-1\"\ntoken_sha256 = \"" + HashToken("firma-sidecar-x") + "\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := ParseTokens("tokens.toml", data)
		if err != nil {
			return
		}
		names := ts.Names()
		for i, n := range names {
			if !ValidSidecarName(n) || slices.Index(names, n) != i {
				t.Fatalf("accepted names %q", names)
			}
		}
	})
}

// FuzzCapabilityClaims: claims either fail validation when signed, or come back from the token
// exactly as they went in, valid inside their window and not at its end.
func FuzzCapabilityClaims(f *testing.F) {
	f.Add("claude-code", "5f0c9a0e-3d1b-4d59-9a51-0f7d2c6b8e11", "communication.external.send", "*.anthropic.com*", int64(3600))
	f.Add("", "", "", "", int64(0))
	f.Add("a b", "s\n", "x\"y", "*", int64(-5))
	f.Fuzz(func(t *testing.T, agent, session, action, scope string, ttl int64) {
		key := fuzzKey()
		c := fuzzClaims()
		c.AgentID, c.SessionID, c.ActionSet, c.ResourceScope = agent, session, []string{action}, scope
		c.Expires = c.IssuedAt.Add(time.Duration(ttl%(1<<31)) * time.Second)
		raw, err := SignCapability(key, c)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "capability claims: ") {
				t.Fatalf("signing failed for another reason than the claims: %v", err)
			}
			return
		}
		got, err := ParseCapability(key.Public().(ed25519.PublicKey), raw)
		if err != nil {
			t.Fatalf("a token just signed does not parse: %v", err)
		}
		c.Issuer = IssuerName
		if !reflect.DeepEqual(*got, c) {
			t.Fatalf("claims changed on the way: %+v → %+v", c, *got)
		}
		if c.Expires.After(c.IssuedAt) {
			if err := got.CheckTime(c.IssuedAt, 0); err != nil {
				t.Fatalf("not valid at issuance: %v", err)
			}
		}
		if err := got.CheckTime(c.Expires, 0); err == nil {
			t.Fatal("valid at its expiry")
		}
	})
}
