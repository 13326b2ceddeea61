package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
)

// version is reported to runners over the control socket.
const version = "firma 0.1"

var _ control.Registry = (*Sidecar)(nil)

// Info tells a runner where to place an agent and what to hide from it.
func (s *Sidecar) Info() control.Info {
	info := control.Info{Version: version}
	if s.cfg.Transparent.Enabled {
		info.Cgroup = cgroup.Canonical(s.cfg.Transparent.Cgroup)
		if s.cfg.Transparent.DNSPort != 0 {
			info.DNS = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(s.cfg.Transparent.DNSPort)))
		}
	}
	info.Hide = s.hiddenPaths()
	info.Protect = s.protectedPaths()
	if s.mitmCA != nil {
		info.CACertPEM = string(s.mitmCA.CertPEM())
	}
	return info
}

// hiddenPaths are the files an agent must not see: keys, the CA, the audit log (its directory too,
// for rotated files; a runner skips a directory that holds its own workspace), credentials.
func (s *Sidecar) hiddenPaths() []string {
	c := s.cfg
	paths := []string{c.Control.Socket, c.Audit.FilePath, c.Audit.SigningKeyPath, c.CA.Dir,
		c.Authority.CacheDir}
	if c.Audit.FilePath != "" {
		paths = append(paths, filepath.Dir(c.Audit.FilePath))
	}
	for _, cr := range c.Credentials {
		paths = append(paths, cr.ValueFromFile)
	}
	return absPaths(append(paths, c.AgentHidden...))
}

// protectedPaths are the files an agent may read but must not change: what decides its policy and
// its capabilities.
func (s *Sidecar) protectedPaths() []string {
	c := s.cfg
	paths := []string{c.Policy.Dir, c.Policy.Schema, c.Mapping.RulesPath, c.Authority.PublicKeyPath,
		c.Authority.RevocationFile}
	for _, a := range c.Agents {
		paths = append(paths, a.CapabilityFile)
	}
	return absPaths(append(paths, c.AgentProtected...))
}

// absPaths makes paths absolute (relative ones are relative to the sidecar's directory, as it
// reads them) and drops empty ones and "/".
func absPaths(paths []string) []string {
	var out []string
	for _, p := range paths {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil && abs != "/" {
			out = append(out, abs)
		}
	}
	return out
}

// Register maps a `firma run` cgroup to its agent once its capability verifies: a capability that
// does not verify, or names another agent, is refused here so that nothing is launched.
func (s *Sidecar) Register(ctx context.Context, r control.Registration) error {
	c, closeFn, err := s.trust.capability(r.CapabilityFile)
	if err != nil {
		return fmt.Errorf("capability %s: %w", r.CapabilityFile, err)
	}
	if ac, ok := c.(*authority.Capability); ok {
		if got := ac.Claims().AgentID; got != r.AgentID {
			closeFn()
			return fmt.Errorf("capability %s: %w: token is for %q, not %q", r.CapabilityFile, authority.ErrCapabilityMismatch, got, r.AgentID)
		}
		cl := ac.Claims()
		if err := cl.CheckTime(time.Now(), s.cfg.Authority.ClockSkew()); err != nil {
			closeFn()
			return fmt.Errorf("capability %s: %w", r.CapabilityFile, err)
		}
	}
	s.regMu.Lock()
	if old, ok := s.regClose[r.Cgroup]; ok {
		old()
	}
	s.regClose[r.Cgroup] = closeFn
	s.regMu.Unlock()
	s.ids.Register(Agent{ID: r.AgentID, SessionID: r.SessionID, Cgroup: r.Cgroup, CapabilityFile: r.CapabilityFile, Capability: c})
	return nil
}

// Unregister forgets a `firma run` cgroup.
func (s *Sidecar) Unregister(ctx context.Context, cgroup string) error {
	s.ids.Unregister(cgroup)
	s.regMu.Lock()
	if closeFn, ok := s.regClose[cgroup]; ok {
		closeFn()
		delete(s.regClose, cgroup)
	}
	s.regMu.Unlock()
	return nil
}

// sweepInterval is how often the sidecar forgets registrations whose cgroup has gone (a runner
// killed with SIGKILL cannot unregister).
const sweepInterval = 10 * time.Second

// sweepRegistrations drops registrations whose cgroup directory no longer exists, until ctx ends.
func (s *Sidecar) sweepRegistrations(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, cg := range s.ids.registeredCgroups() {
			if _, err := os.Stat(filepath.Join(s.ids.mount, filepath.FromSlash(cg))); errors.Is(err, os.ErrNotExist) {
				s.Unregister(ctx, cg)
				s.log.Info().Str(logfields.Cgroup, cg).Msg("agent cgroup gone: registration dropped")
			}
		}
	}
}
