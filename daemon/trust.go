package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/policies"
)

// trust is the sidecar's side of the authority: the bundle feed (policy and revocations) and the
// capability store that verifies agents' capabilities (Stage 1). Without [sidecar.authority] both
// are absent and policy comes from [sidecar.policy] alone.
type trust struct {
	client  *authority.Client          // nil without url
	store   *authority.CapabilityStore // nil when capabilities are not enforced
	closers []func() error
}

func newTrust(cfg authority.ClientConfig, engine *policies.Engine, log zerolog.Logger) (_ *trust, err error) {
	t := &trust{}
	if !cfg.Stage1() {
		return t, nil
	}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	revs := authority.RevocationChecker(authority.NoRevocations)
	var pub []byte
	switch {
	case cfg.Enabled():
		c, err := authority.NewClient(cfg, log, func(b authority.Bundle) error {
			return engine.LoadBundle(b.Files, b.Schema)
		})
		if err != nil {
			return nil, fmt.Errorf("sidecar.authority: %w", err)
		}
		t.client, revs, pub = c, c, c.PublicKey()
	default:
		if cfg.RevocationFile != "" {
			rf, err := authority.OpenRevocationFile(cfg.RevocationFile, log)
			if err != nil {
				return nil, fmt.Errorf("sidecar.authority: %w", err)
			}
			t.closers = append(t.closers, rf.Close)
			revs = rf
		}
		if pub, err = authority.LoadPublicKey(cfg.PublicKeyPath); err != nil {
			return nil, fmt.Errorf("sidecar.authority: %w", err)
		}
	}
	if t.store, err = authority.NewCapabilityStore(pub, revs, cfg.ClockSkew(), log); err != nil {
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

// stale is why decisions must be refused because the bundle is out of date, or nil.
func (t *trust) stale() error {
	if t.client != nil && t.client.Stale() {
		return authority.ErrStale
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
