package agents

import (
	"errors"
	"fmt"

	"github.com/openfirma/firma/internal/cgroup"
)

// Config is one [[sidecar.agents]] entry: a static identity for a cgroup subtree, typically a
// systemd service in firma-agents.slice.
type Config struct {
	Cgroup         string `toml:"cgroup"` // relative to the cgroup2 mount; this cgroup and its descendants
	AgentID        string `toml:"agent_id"`
	SessionID      string `toml:"session_id"`
	CapabilityFile string `toml:"capability_file"`
	// Mode is "enforce" (the default) or "monitor": every decision is made and recorded as in
	// enforce mode, but the agent's policy denials do not stop its flows.
	Mode string `toml:"mode"`
}

// Modes of an agent.
const (
	ModeEnforce = "enforce"
	ModeMonitor = "monitor"
)

// Validate checks every entry; errors name keys relative to [sidecar] ("agents[1].cgroup").
func Validate(entries []Config) error {
	var errs []error
	seen := map[string]bool{}
	for i, a := range entries {
		key := fmt.Sprintf("agents[%d]", i)
		if !cgroup.ValidRelative(a.Cgroup) {
			errs = append(errs, fmt.Errorf("%s.cgroup: %q is not a relative cgroup path", key, a.Cgroup))
			continue
		}
		if a.AgentID == "" {
			errs = append(errs, fmt.Errorf("%s.agent_id: must be set", key))
		}
		if a.Mode != "" && a.Mode != ModeEnforce && a.Mode != ModeMonitor {
			errs = append(errs, fmt.Errorf("%s.mode: %q, want %q or %q", key, a.Mode, ModeEnforce, ModeMonitor))
		}
		cg := cgroup.Canonical(a.Cgroup)
		if seen[cg] {
			errs = append(errs, fmt.Errorf("%s.cgroup: %q is listed twice", key, a.Cgroup))
		}
		seen[cg] = true
	}
	return errors.Join(errs...)
}
