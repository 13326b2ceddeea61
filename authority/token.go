package authority

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"aidanwoods.dev/go-paseto"
)

// Implicit assertions bind each signed message to its purpose: a bundle can never verify as a
// capability, nor a revocation list as a bundle.
var (
	implicitCapability = []byte("firma capability v1")
	implicitBundle     = []byte("firma policy bundle v1")
	implicitFreshness  = []byte("firma policy bundle freshness v1")
	implicitRevocation = []byte("firma revocation list v1")
)

// IssuerName is the iss claim of everything the authority signs.
const IssuerName = "firma-authority"

// Stage 1 deny reasons. Authorize and VerifyToken wrap one of these, so callers branch with
// errors.Is and the error text starts with the reason.
var (
	ErrCapabilityInvalid     = errors.New("capability invalid")
	ErrCapabilityExpired     = errors.New("capability expired")
	ErrCapabilityNotYetValid = errors.New("capability not yet valid")
	ErrCapabilityRevoked     = errors.New("capability revoked")
	ErrCapabilityMismatch    = errors.New("capability agent mismatch")
	ErrCapabilityScope       = errors.New("capability scope")
	ErrCapabilityMissing     = errors.New("capability missing")
)

// Claims are a capability token's contents (DESIGN.md "Capability").
type Claims struct {
	TokenID       string    `json:"token_id"`
	AgentID       string    `json:"agent_id"`
	SessionID     string    `json:"session_id"`
	ActionSet     []string  `json:"action_set"`
	ResourceScope string    `json:"resource_scope"`
	IssuedAt      time.Time `json:"iat"`
	NotBefore     time.Time `json:"nbf"`
	Expires       time.Time `json:"exp"`
	Issuer        string    `json:"iss"`
}

// Allows reports whether actionClass is in the token's action set.
func (c *Claims) Allows(actionClass string) bool { return slices.Contains(c.ActionSet, actionClass) }

// idPattern is what agent ids, session ids, token ids and action classes may look like: printable,
// no spaces, nothing that needs quoting in a Cedar entity id or a revocation-file line.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,254}$`)

// ValidID reports whether s may be used as an agent, session or token id or an action class.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// Validate checks the claims' shape (not their time window).
func (c *Claims) Validate() error {
	var errs []error
	for _, f := range []struct{ name, v string }{
		{"token_id", c.TokenID}, {"agent_id", c.AgentID}, {"session_id", c.SessionID},
	} {
		if !ValidID(f.v) {
			errs = append(errs, fmt.Errorf("%s %q is not a valid id", f.name, f.v))
		}
	}
	if len(c.ActionSet) == 0 {
		errs = append(errs, errors.New("action_set is empty"))
	}
	for _, a := range c.ActionSet {
		if !ValidID(a) {
			errs = append(errs, fmt.Errorf("action %q is not a valid action class", a))
		}
	}
	if err := ValidateScope(c.ResourceScope); err != nil {
		errs = append(errs, err)
	}
	if c.IssuedAt.IsZero() || c.Expires.IsZero() || c.NotBefore.IsZero() {
		errs = append(errs, errors.New("iat, nbf and exp must be set"))
	} else if !c.Expires.After(c.NotBefore) {
		errs = append(errs, errors.New("exp is not after nbf"))
	}
	return errors.Join(errs...)
}

// NewTokenID returns a random 128-bit token id in UUID form (version 4).
func NewTokenID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// footer is the (authenticated) PASETO footer: which key signed the message.
type footer struct {
	KeyID string `json:"kid"`
}

// signMessage signs claims (any JSON object) as a v4.public token with the given implicit assertion.
func signMessage(key Signer, claims any, implicit []byte) (string, error) {
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok {
		return "", fmt.Errorf("authority key is %T, want Ed25519", key.Public())
	}
	foot, err := json.Marshal(footer{KeyID: KeyID(pub)})
	if err != nil {
		return "", err
	}
	tok, err := paseto.NewTokenFromClaimsJSON(body, foot)
	if err != nil {
		return "", err
	}
	return key.signV4(tok, implicit), nil
}

// What a signed message that fails verification is: signed by another key (its footer names
// another key id), not a valid signature under ours, or not a well-formed message at all. Every
// verification error wraps exactly one of these.
var (
	errWrongKey     = errors.New("signed by another key")
	errBadSignature = errors.New("signature does not verify")
	errMalformed    = errors.New("malformed")
)

// verifyMessage checks raw's signature under pub with the implicit assertion and decodes its claims
// into out. Time claims are not checked here: each caller applies its own window and skew.
func verifyMessage(pub ed25519.PublicKey, raw string, implicit []byte, out any) error {
	pk, err := paseto.NewV4AsymmetricPublicKeyFromEd25519(pub)
	if err != nil {
		return fmt.Errorf("public key: %w", err)
	}
	raw = strings.TrimSpace(raw)
	parser := paseto.MakeParser(nil)
	tok, err := parser.ParseV4Public(pk, raw, implicit)
	if err != nil {
		return fmt.Errorf("verifying signature: %w: %v", whyUnverified(parser, pub, raw), err)
	}
	if err := json.Unmarshal(tok.ClaimsJSON(), out); err != nil {
		return fmt.Errorf("%w: decoding claims: %v", errMalformed, err)
	}
	return nil
}

// whyUnverified tells a message signed by another authority (its authenticated footer names
// another key; read here unverified, only to explain the failure) from a bad signature and from
// something that is not a v4.public message.
func whyUnverified(parser paseto.Parser, pub ed25519.PublicKey, raw string) error {
	if !strings.HasPrefix(raw, "v4.public.") || strings.Count(raw, ".") < 2 {
		return errMalformed
	}
	foot, err := parser.UnsafeParseFooter(paseto.V4Public, raw)
	if err != nil {
		return errMalformed
	}
	var f footer
	if json.Unmarshal(foot, &f) == nil && f.KeyID != "" && f.KeyID != KeyID(pub) {
		return errWrongKey
	}
	return errBadSignature
}

// SignCapability signs c as a capability token. It sets c.Issuer and validates the claims first.
func SignCapability(key Signer, c Claims) (string, error) {
	c.Issuer = IssuerName
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("capability claims: %w", err)
	}
	return signMessage(key, c, implicitCapability)
}

// ParseCapability verifies raw's signature under pub and returns its claims, without checking the
// time window. Any failure wraps ErrCapabilityInvalid.
func ParseCapability(pub ed25519.PublicKey, raw string) (*Claims, error) {
	var c Claims
	if err := verifyMessage(pub, raw, implicitCapability, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCapabilityInvalid, err)
	}
	if c.Issuer != IssuerName {
		return nil, fmt.Errorf("%w: issuer %q", ErrCapabilityInvalid, c.Issuer)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCapabilityInvalid, err)
	}
	return &c, nil
}

// VerifyCapability is ParseCapability plus the time window: now must lie in [nbf − skew, exp + skew).
// It returns ErrCapabilityInvalid, ErrCapabilityNotYetValid or ErrCapabilityExpired.
func VerifyCapability(pub ed25519.PublicKey, raw string, now time.Time, skew time.Duration) (*Claims, error) {
	c, err := ParseCapability(pub, raw)
	if err != nil {
		return nil, err
	}
	if err := c.CheckTime(now, skew); err != nil {
		return nil, err
	}
	return c, nil
}

// CheckTime applies the token's validity window with skew tolerance on both ends.
func (c *Claims) CheckTime(now time.Time, skew time.Duration) error {
	if now.Add(skew).Before(c.NotBefore) {
		return fmt.Errorf("%w: valid from %s", ErrCapabilityNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Add(-skew).Before(c.Expires) {
		return fmt.Errorf("%w: at %s", ErrCapabilityExpired, c.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}
