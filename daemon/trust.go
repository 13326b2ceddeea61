package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// reasonStale is the deny reason while the authority's bundle is out of date.
var reasonStale = authority.ErrStale.Error()

// trust is the sidecar's side of the authority: the bundle feed (policy + revocations) and Stage 1,
// the capability check for each agent. Without [sidecar.authority] both are absent and policy comes
// from [sidecar.policy] alone.
type trust struct {
	client  *authority.Client          // nil without url
	store   *authority.CapabilityStore // nil when capabilities are not enforced
	closers []func() error
}

func newTrust(cfg authority.ClientConfig, engine *policies.Engine, log zerolog.Logger) (*trust, error) {
	t := &trust{}
	if !cfg.Stage1() {
		return t, nil
	}
	var revs authority.RevocationChecker = authority.NoRevocations
	pub, err := func() ([]byte, error) {
		if cfg.Enabled() {
			c, err := authority.NewClient(cfg, log, func(b authority.Bundle) error {
				return engine.LoadBundle(b.Files, b.Schema)
			})
			if err != nil {
				return nil, err
			}
			t.client, revs = c, c
			return c.PublicKey(), nil
		}
		if cfg.RevocationFile != "" {
			rf, err := authority.OpenRevocationFile(cfg.RevocationFile, log)
			if err != nil {
				return nil, err
			}
			t.closers = append(t.closers, rf.Close)
			revs = rf
		}
		return authority.LoadPublicKey(cfg.PublicKeyPath)
	}()
	if err != nil {
		t.close()
		return nil, fmt.Errorf("sidecar.authority: %w", err)
	}
	t.store, err = authority.NewCapabilityStore(pub, revs, cfg.ClockSkew(), log)
	if err != nil {
		t.close()
		return nil, fmt.Errorf("sidecar.authority: %w", err)
	}
	t.closers = append(t.closers, t.store.Close)
	return t, nil
}

// run follows the authority until ctx ends.
func (t *trust) run(ctx context.Context, log zerolog.Logger) {
	if t.client == nil {
		return
	}
	if err := t.client.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error().Err(err).Msg("authority client stopped")
	}
}

// stale reports whether decisions must be refused because the bundle is out of date.
func (t *trust) stale() bool { return t.client != nil && t.client.Stale() }

// capability opens the Stage 1 check for an agent's capability file. With capabilities enforced, no
// file means every decision is denied ("capability missing"); without them a file is an error,
// since nothing could verify it.
func (t *trust) capability(path string) (policies.Capability, func() error, error) {
	switch {
	case t.store == nil && path == "":
		return nil, func() error { return nil }, nil
	case t.store == nil:
		return nil, nil, errors.New("a capability file needs [sidecar.authority] url or public_key_path to verify it")
	case path == "":
		return authority.MissingCapability{}, func() error { return nil }, nil
	}
	c, err := t.store.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return c, c.Close, nil
}

// openStatic attaches Stage 1 to each [[sidecar.agents]] entry. A capability naming another agent
// is kept, and logged: Stage 1 denies that agent's connections as an agent mismatch.
func (t *trust) openStatic(ids *Identities, agents []AgentConfig, log zerolog.Logger) error {
	for _, a := range agents {
		c, closeFn, err := t.capability(a.CapabilityFile)
		if err != nil {
			return fmt.Errorf("sidecar.agents %q: capability_file %s: %w", a.AgentID, a.CapabilityFile, err)
		}
		t.closers = append(t.closers, closeFn)
		if ac, ok := c.(*authority.Capability); ok && ac.Claims().AgentID != a.AgentID {
			log.Warn().Str(logfields.Agent, a.AgentID).Str(logfields.File, a.CapabilityFile).
				Str("token_agent", ac.Claims().AgentID).Msg("capability is for another agent: its connections will be denied")
		}
		ids.SetCapability(a.Cgroup, c)
	}
	return nil
}

func (t *trust) close() error {
	var errs []error
	for i := len(t.closers) - 1; i >= 0; i-- {
		errs = append(errs, t.closers[i]())
	}
	t.closers = nil
	return errors.Join(errs...)
}
