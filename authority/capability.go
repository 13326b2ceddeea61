package authority

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// ErrStale is the deny reason while the sidecar's view of the authority is too old to trust.
var ErrStale = errors.New("policy bundle stale")

// staler is implemented by revocation sources that can go out of date (*Client).
type staler interface{ Stale() bool }

// CapabilityStore builds Stage 1 objects from capability files and hot-reloads them. One store
// (one inotify instance) serves every agent of a sidecar.
type CapabilityStore struct {
	pub         ed25519.PublicKey
	revocations RevocationChecker
	skew        time.Duration
	log         zerolog.Logger
	watcher     *fileWatcher
}

// NewCapabilityStore returns a store that verifies tokens under pub, asks revocations (required:
// pass a *Client, a *RevocationFile, or NoRevocations when there is no revocation source at all)
// and tolerates skew of clock difference on both ends of a token's validity window (clock_skew,
// 0 by default: an expired token is refused at once).
func NewCapabilityStore(pub ed25519.PublicKey, revocations RevocationChecker, skew time.Duration, log zerolog.Logger) (*CapabilityStore, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, errors.New("capability store: no authority public key")
	}
	if revocations == nil {
		return nil, errors.New("capability store: no revocation source")
	}
	w, err := newFileWatcher(log)
	if err != nil {
		return nil, fmt.Errorf("capability store: %w", err)
	}
	return &CapabilityStore{pub: pub, revocations: revocations, skew: skew, log: log, watcher: w}, nil
}

// Close stops watching every capability file opened through the store.
func (s *CapabilityStore) Close() error { return s.watcher.Close() }

// NoRevocations is the revocation source for Stage 1 without an authority or a revocation file.
var NoRevocations RevocationChecker = noRevocations{}

type noRevocations struct{}

func (noRevocations) Revoked(string) bool { return false }

// Capability is one agent's capability file, verified and kept current: it implements
// policies.Capability (Stage 1). A rewrite of the file that verifies replaces the token; one that
// does not is logged and the previous token stays in force.
type Capability struct {
	store  *CapabilityStore
	path   string
	cancel func()

	mu     sync.RWMutex
	claims *Claims
}

var _ policies.Capability = (*Capability)(nil)

// Open loads and verifies the capability file at path (signature and mirrors; the time window is
// checked per decision) and watches it. An unreadable or unverifiable file is an error naming it,
// and so is a token already on the revocation list (wrapping ErrCapabilityRevoked), so that
// `firma run` refuses to launch an agent whose every request would be denied.
func (s *CapabilityStore) Open(path string) (*Capability, error) {
	claims, _, err := LoadCapabilityFile(path, s.pub)
	if err != nil {
		return nil, err
	}
	if s.revocations.Revoked(claims.TokenID) {
		return nil, fmt.Errorf("%s: %w: token %s", path, ErrCapabilityRevoked, claims.TokenID)
	}
	c := &Capability{store: s, path: path, claims: claims}
	cancel, err := s.watcher.watch(path, c.reload)
	if err != nil {
		return nil, fmt.Errorf("watching capability file %s: %w", path, err)
	}
	c.cancel = cancel
	s.log.Info().Str(logfields.File, path).Str(logfields.TokenID, claims.TokenID).
		Str(logfields.Agent, claims.AgentID).Time(logfields.Expires, claims.Expires).Msg("capability loaded")
	return c, nil
}

func (c *Capability) reload() {
	log := c.store.log.With().Str(logfields.File, c.path).Logger()
	claims, _, err := LoadCapabilityFile(c.path, c.store.pub)
	if err != nil {
		log.Error().Err(err).Msg("capability file changed but does not verify; keeping the previous token")
		return
	}
	c.mu.Lock()
	old := c.claims
	c.claims = claims
	c.mu.Unlock()
	if old.TokenID != claims.TokenID {
		log.Info().Str(logfields.TokenID, claims.TokenID).Str(logfields.PreviousTokenID, old.TokenID).
			Str(logfields.Agent, claims.AgentID).Time(logfields.Expires, claims.Expires).Msg("capability reloaded")
		if c.store.revocations.Revoked(claims.TokenID) {
			log.Error().Str(logfields.TokenID, claims.TokenID).Str(logfields.Agent, claims.AgentID).
				Msg("the new capability is revoked: every request of this agent will be denied")
		}
	}
}

// Close stops watching the file.
func (c *Capability) Close() error {
	c.cancel()
	return nil
}

// Path is the capability file's path.
func (c *Capability) Path() string { return c.path }

// Claims returns a copy of the current token's claims.
func (c *Capability) Claims() Claims {
	c.mu.RLock()
	defer c.mu.RUnlock()
	cl := *c.claims
	cl.ActionSet = append([]string(nil), cl.ActionSet...)
	return cl
}

// Authorize is Stage 1: the token must be inside its validity window (with skew), not revoked,
// issued to agentID (the agent the kernel says owns the connection), and cover actionClass and
// resource (host+path). It returns the token id, or an error wrapping exactly one of
// ErrCapabilityExpired, ErrCapabilityNotYetValid, ErrCapabilityRevoked, ErrCapabilityMismatch,
// ErrCapabilityScope or ErrStale; the error text starts with that reason.
func (c *Capability) Authorize(agentID, actionClass, resource string, now time.Time) (string, error) {
	c.mu.RLock()
	cl := c.claims
	c.mu.RUnlock()
	return authorize(cl, c.store.revocations, c.store.skew, agentID, actionClass, resource, now)
}

func authorize(cl *Claims, revs RevocationChecker, skew time.Duration, agentID, actionClass, resource string, now time.Time) (string, error) {
	if cl == nil {
		return "", ErrCapabilityInvalid
	}
	if err := cl.CheckTime(now, skew); err != nil {
		return cl.TokenID, err
	}
	if s, ok := revs.(staler); ok && s.Stale() {
		return cl.TokenID, fmt.Errorf("%w: revocations cannot be checked", ErrStale)
	}
	if revs.Revoked(cl.TokenID) {
		return cl.TokenID, fmt.Errorf("%w: token %s", ErrCapabilityRevoked, cl.TokenID)
	}
	if cl.AgentID != agentID {
		return cl.TokenID, fmt.Errorf("%w: token is for %q, connection is from %q", ErrCapabilityMismatch, cl.AgentID, agentID)
	}
	if !cl.Allows(actionClass) {
		return cl.TokenID, fmt.Errorf("%w: action %q not granted", ErrCapabilityScope, actionClass)
	}
	if !ScopeCovers(cl.ResourceScope, resource) {
		return cl.TokenID, fmt.Errorf("%w: %q not in %q", ErrCapabilityScope, resource, cl.ResourceScope)
	}
	return cl.TokenID, nil
}

// MissingCapability is Stage 1 for an agent that presented no capability while capabilities are
// enforced: it denies everything with ErrCapabilityMissing.
type MissingCapability struct{}

var _ policies.Capability = MissingCapability{}

// Authorize always denies.
func (MissingCapability) Authorize(string, string, string, time.Time) (string, error) {
	return "", ErrCapabilityMissing
}
