package authority

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/openfirma/firma/internal/keyfile"
)

// CapabilityFile is the TOML file `firma authority issue --output F` writes. Only RawToken is
// trusted; the other fields mirror the token's claims for people reading the file. A mirror that is
// present must agree with the token.
//
// Without the token, the same fields are one line of the issuance record (JSON; see RecordIssued).
type CapabilityFile struct {
	RawToken      string    `toml:"raw_token" json:"-"`
	TokenID       string    `toml:"token_id,omitempty" json:"token_id"`
	AgentID       string    `toml:"agent_id,omitempty" json:"agent_id"`
	SessionID     string    `toml:"session_id,omitempty" json:"session_id"`
	Actions       []string  `toml:"actions,omitempty" json:"actions"`
	ResourceScope string    `toml:"resource_scope,omitempty" json:"resource_scope"`
	IssuedAt      time.Time `toml:"issued_at,omitempty" json:"issued_at"`
	ExpiresAt     time.Time `toml:"expires_at,omitempty" json:"expires_at"`
}

// NewCapabilityFile returns the file contents for a signed token and its claims.
func NewCapabilityFile(raw string, c *Claims) CapabilityFile {
	return CapabilityFile{
		RawToken:      raw,
		TokenID:       c.TokenID,
		AgentID:       c.AgentID,
		SessionID:     c.SessionID,
		Actions:       slices.Clone(c.ActionSet),
		ResourceScope: c.ResourceScope,
		IssuedAt:      c.IssuedAt.UTC(),
		ExpiresAt:     c.Expires.UTC(),
	}
}

// Marshal renders the file, with a header saying what is trusted.
func (f CapabilityFile) Marshal() ([]byte, error) {
	body, err := toml.Marshal(f)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("# firma capability. Only raw_token is trusted; the other keys mirror its claims.\n")
	b.Write(body)
	return b.Bytes(), nil
}

// WriteCapabilityFile writes f to path (0600; parent created 0700), replacing any old file
// atomically so that a sidecar watching it never reads half a token.
func WriteCapabilityFile(path string, f CapabilityFile) error {
	data, err := f.Marshal()
	if err != nil {
		return fmt.Errorf("encoding capability file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := keyfile.WriteAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("writing capability file %s: %w", path, err)
	}
	return nil
}

// ReadCapabilityFile decodes path strictly (unknown keys are errors naming file and line). It does
// not verify the token; see LoadCapabilityFile.
func ReadCapabilityFile(path string) (*CapabilityFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f CapabilityFile
	if err := decodeStrict(path, data, &f); err != nil {
		return nil, err
	}
	if f.RawToken == "" {
		return nil, fmt.Errorf("%s: raw_token is missing", path)
	}
	return &f, nil
}

// LoadCapabilityFile reads path and verifies its token's signature under pub (not its time window:
// that is checked on every use). Mirrors that disagree with the token are an error.
func LoadCapabilityFile(path string, pub ed25519.PublicKey) (*Claims, string, error) {
	f, err := ReadCapabilityFile(path)
	if err != nil {
		return nil, "", err
	}
	c, err := ParseCapability(pub, f.RawToken)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	if err := f.checkMirrors(c); err != nil {
		return nil, "", fmt.Errorf("%s: %w: %v", path, ErrCapabilityInvalid, err)
	}
	return c, f.RawToken, nil
}

func (f *CapabilityFile) checkMirrors(c *Claims) error {
	var errs []error
	mirror := func(key, got, want string) {
		if got != "" && got != want {
			errs = append(errs, fmt.Errorf("%s %q disagrees with the token's %q", key, got, want))
		}
	}
	mirror("token_id", f.TokenID, c.TokenID)
	mirror("agent_id", f.AgentID, c.AgentID)
	mirror("session_id", f.SessionID, c.SessionID)
	mirror("resource_scope", f.ResourceScope, c.ResourceScope)
	if f.Actions != nil && !slices.Equal(f.Actions, c.ActionSet) {
		errs = append(errs, fmt.Errorf("actions %q disagree with the token's %q", f.Actions, c.ActionSet))
	}
	if !f.IssuedAt.IsZero() && !f.IssuedAt.Equal(c.IssuedAt) {
		errs = append(errs, fmt.Errorf("issued_at %s disagrees with the token's %s", f.IssuedAt, c.IssuedAt))
	}
	if !f.ExpiresAt.IsZero() && !f.ExpiresAt.Equal(c.Expires) {
		errs = append(errs, fmt.Errorf("expires_at %s disagrees with the token's %s", f.ExpiresAt, c.Expires))
	}
	return errors.Join(errs...)
}
