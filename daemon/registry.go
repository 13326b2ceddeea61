package daemon

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/openfirma/firma/daemon/agents"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/version"
)

// registry is what the control socket serves: Info from the sidecar's configuration, registrations
// kept by the agents room.
type registry struct{ s *Sidecar }

var _ control.Registry = registry{}

// Register maps a `firma run` cgroup to its agent — only while the kernel programs are in force, so
// that nothing is launched into a cgroup that is not enforced.
func (r registry) Register(ctx context.Context, reg control.Registration) error {
	if p := r.s.progs; p != nil {
		if err := p.Check().Err(); err != nil {
			return fmt.Errorf("refusing to register: %w", err)
		}
	}
	return r.s.agents.Register(ctx, reg)
}

func (r registry) Unregister(ctx context.Context, cg string) error {
	return r.s.agents.Unregister(ctx, cg)
}

// Info tells a runner where to place an agent and what to hide from it.
func (r registry) Info() control.Info {
	s := r.s
	info := control.Info{Version: version.String()}
	if s.cfg.Transparent.Enabled {
		info.Cgroup = cgroup.Canonical(s.cfg.Transparent.Cgroup)
		if s.cfg.Transparent.DNSPort != 0 {
			info.DNS = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(s.cfg.Transparent.DNSPort)))
		}
	}
	info.Hide = s.hiddenPaths()
	info.Protect = s.protectedPaths()
	if s.ca != nil {
		info.CACertPEM = string(s.ca.CertPEM())
	}
	for _, a := range s.monitored() {
		info.Monitored = append(info.Monitored, control.MonitoredAgent{AgentID: a.ID, Cgroup: a.Cgroup, Registered: a.Registered})
	}
	slices.SortFunc(info.Monitored, func(a, b control.MonitoredAgent) int {
		return cmp.Or(cmp.Compare(a.AgentID, b.AgentID), cmp.Compare(a.Cgroup, b.Cgroup))
	})
	return info
}

// monitored lists the agents in monitor mode (none before the agents room is built).
func (s *Sidecar) monitored() []agents.Agent {
	if s.agents == nil {
		return nil
	}
	return s.agents.Monitored()
}

// hiddenPaths are the files an agent must not see: keys, the CA, the audit log (its directory too,
// for rotated files; a runner skips a directory that holds its own workspace), credentials.
func (s *Sidecar) hiddenPaths() []string {
	c := s.cfg
	paths := append([]string{c.Control.Socket, c.Audit.FilePath, c.Audit.SigningKeyPath, c.CA.Dir},
		c.Authority.HiddenPaths()...)
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
	paths := append([]string{c.Policy.Dir, c.Policy.Schema, c.Mapping.RulesPath}, c.Authority.ProtectedPaths()...)
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
