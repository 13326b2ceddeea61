// Package agents owns who an agent is: the static identities of [[sidecar.agents]], the cgroups
// `firma run` registers at runtime, and the capability handle (Stage 1 check) each one holds. It maps
// the cgroup id the kernel attests for a flow to the agent covering it — the nearest ancestor (or
// the cgroup itself) with an entry, registrations before static entries — and releases a
// registration's capability when the registration is replaced, withdrawn, or its cgroup vanishes.
//
// It decides nothing about policy and never touches the network.
package agents

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/authority"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
	"github.com/openfirma/firma/policies"
)

// ErrUnknownAgent means no static entry or registration covers a cgroup: its flows are denied.
var ErrUnknownAgent = errors.New("unknown agent")

// ErrDeparted means the cgroup's registration was withdrawn a moment ago: Resolve still returns its
// agent, so that a late report names who did it, but nothing the cgroup asks for is allowed.
var ErrDeparted = fmt.Errorf("%w: its registration was withdrawn", ErrUnknownAgent)

// Agent is the identity the sidecar gives a cgroup subtree.
type Agent struct {
	ID             string
	SessionID      string
	Cgroup         string // the configured or registered cgroup, canonical, relative to the cgroup2 mount
	CapabilityFile string
	// Capability is the Stage 1 check for this agent; nil when capabilities are not enforced.
	Capability policies.Capability
	Registered bool // from `firma run`, not [[sidecar.agents]]
	// Monitor: the agent's policy denials are recorded, not enforced (monitor mode).
	Monitor bool
}

// entry is an agent and the release of its capability handle.
type entry struct {
	agent   Agent
	release func() error
}

// Options configure a Registry.
type Options struct {
	// Mount is where the cgroup2 hierarchy is mounted.
	Mount string
	// Static is [[sidecar.agents]].
	Static []Config
	// Store verifies capability files; nil when capabilities are not enforced (Stage 1 off).
	Store *authority.CapabilityStore
	// ClockSkew is how far outside its validity a capability is still accepted at registration.
	ClockSkew time.Duration
	Log       zerolog.Logger
}

// Registry maps cgroups to agents. It is safe for concurrent use.
type Registry struct {
	mount     string
	mountFD   int
	store     *authority.CapabilityStore
	clockSkew time.Duration
	log       zerolog.Logger

	mu         sync.RWMutex
	static     map[string]entry
	registered map[string]entry
	departed   map[string]departure // withdrawn registrations, kept for late reports
	paths      map[uint64]string    // cgroup id → path relative to the mount, learned on demand
}

// Departed is how long a withdrawn registration still names the agent of its cgroup. A report about
// a cgroup can reach the sidecar after the cgroup is gone — a kernel refusal read from the ring
// buffer while the sidecar is busy, by an agent that did something forbidden and exited at once — and
// must still name the agent that did it. A cgroup path registered again is the new registration's.
const Departed = 2 * time.Minute

// maxDeparted bounds the memory of withdrawn registrations (each a few hundred bytes).
const maxDeparted = 10_000

// departure is a withdrawn registration and when it is forgotten.
type departure struct {
	agent Agent
	until time.Time
}

// New opens the cgroup2 mount for id → path lookups and the capability of every static entry. A
// static capability naming another agent is kept and logged: Stage 1 then denies that agent's
// connections as an agent mismatch, which the audit log shows.
func New(o Options) (_ *Registry, err error) {
	fd, err := unix.Open(o.Mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup2 mount %s: %w", o.Mount, err)
	}
	r := &Registry{
		mount:      o.Mount,
		mountFD:    fd,
		store:      o.Store,
		clockSkew:  o.ClockSkew,
		log:        o.Log,
		static:     map[string]entry{},
		registered: map[string]entry{},
		departed:   map[string]departure{},
		paths:      map[uint64]string{},
	}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	for _, a := range o.Static {
		c, release, err := r.openCapability(a.CapabilityFile)
		if errors.Is(err, authority.ErrCapabilityRevoked) {
			// One revoked agent must not take the sidecar — and every other agent — down with it:
			// this agent's every decision is denied with the reason.
			r.log.Error().Err(err).Str(logfields.Agent, a.AgentID).Msg("capability revoked: every connection of this agent is denied")
			c, release, err = refusedCapability{err}, func() error { return nil }, nil
		}
		if err != nil {
			return nil, fmt.Errorf("sidecar.agents %q: capability_file %s: %w", a.AgentID, a.CapabilityFile, err)
		}
		if other := tokenAgent(c); other != "" && other != a.AgentID {
			r.log.Warn().Str(logfields.Agent, a.AgentID).Str(logfields.File, a.CapabilityFile).
				Str("token_agent", other).Msg("capability is for another agent: its connections will be denied")
		}
		cg := cgroup.Canonical(a.Cgroup)
		r.static[cg] = entry{
			agent: Agent{ID: a.AgentID, SessionID: a.SessionID, Cgroup: cg, CapabilityFile: a.CapabilityFile, Capability: c,
				Monitor: a.Mode == ModeMonitor},
			release: release,
		}
	}
	return r, nil
}

// openCapability opens the Stage 1 check for a capability file. With capabilities enforced, no file
// means every decision is denied ("capability missing"); without them a file is an error, since
// nothing could verify it.
func (r *Registry) openCapability(file string) (policies.Capability, func() error, error) {
	noop := func() error { return nil }
	switch {
	case r.store == nil && file == "":
		return nil, noop, nil
	case r.store == nil:
		return nil, nil, errors.New("a capability file needs [sidecar.authority] url or public_key_path to verify it")
	case file == "":
		return authority.MissingCapability{}, noop, nil
	}
	c, err := r.store.Open(file)
	if err != nil {
		return nil, nil, err
	}
	return c, c.Close, nil
}

// refusedCapability is the Stage 1 check of a static agent whose capability was refused when the
// sidecar started (revoked): every decision is denied with why.
type refusedCapability struct{ err error }

func (c refusedCapability) Authorize(string, string, string, time.Time) (string, error) {
	return "", c.err
}

// tokenAgent is the agent id a verified capability names, or "".
func tokenAgent(c policies.Capability) string {
	if ac, ok := c.(*authority.Capability); ok {
		return ac.Claims().AgentID
	}
	return ""
}

// Register maps a `firma run` cgroup to its agent once its capability verifies: a capability that
// does not verify, names another agent or is outside its validity is refused here, so that nothing is
// launched. A registration replaces an earlier one for the same cgroup and releases its capability.
func (r *Registry) Register(_ context.Context, reg control.Registration) error {
	c, release, err := r.openCapability(reg.CapabilityFile)
	if err != nil {
		return fmt.Errorf("capability %s: %w", reg.CapabilityFile, err)
	}
	if ac, ok := c.(*authority.Capability); ok {
		cl := ac.Claims()
		if cl.AgentID != reg.AgentID {
			release()
			return fmt.Errorf("capability %s: %w: token is for %q, not %q", reg.CapabilityFile, authority.ErrCapabilityMismatch, cl.AgentID, reg.AgentID)
		}
		if err := cl.CheckTime(time.Now(), r.clockSkew); err != nil {
			release()
			return fmt.Errorf("capability %s: %w", reg.CapabilityFile, err)
		}
	}
	cg := cgroup.Canonical(reg.Cgroup)
	// Learn the cgroup's id now, while it exists: a report read after it is gone still finds it.
	id, idErr := cgroup.ID(filepath.Join(r.mount, filepath.FromSlash(cg)))
	r.mu.Lock()
	if idErr == nil {
		r.remember(id, cg)
	}
	delete(r.departed, cg)
	old, had := r.registered[cg]
	r.registered[cg] = entry{
		agent: Agent{ID: reg.AgentID, SessionID: reg.SessionID, Cgroup: cg, CapabilityFile: reg.CapabilityFile,
			Capability: c, Registered: true, Monitor: reg.Monitor},
		release: release,
	}
	r.mu.Unlock()
	if had {
		old.release()
	}
	if reg.Monitor {
		r.log.Warn().Str(logfields.Agent, reg.AgentID).Str(logfields.Cgroup, cg).
			Msg("MONITOR MODE: this agent's policy denials are recorded, not enforced")
	}
	return nil
}

// Monitored lists the agents in monitor mode, static and registered, for the startup log and
// firma doctor.
func (r *Registry) Monitored() []Agent {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Agent
	for _, m := range []map[string]entry{r.static, r.registered} {
		for _, e := range m {
			if e.agent.Monitor {
				out = append(out, e.agent)
			}
		}
	}
	return out
}

// Unregister forgets a registration and releases its capability; an unknown cgroup is not an error.
func (r *Registry) Unregister(_ context.Context, cg string) error {
	cg = cgroup.Canonical(cg)
	now := time.Now()
	r.mu.Lock()
	old, had := r.registered[cg]
	delete(r.registered, cg)
	if had {
		r.depart(cg, old.agent, now)
	}
	r.mu.Unlock()
	if had {
		old.release()
	}
	return nil
}

// SweepInterval is how often Sweep forgets registrations whose cgroup has gone (a runner killed with
// SIGKILL cannot unregister).
const SweepInterval = 10 * time.Second

// Sweep drops registrations whose cgroup directory no longer exists, every interval until ctx ends.
func (r *Registry) Sweep(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.sweepOnce(ctx)
	}
}

func (r *Registry) sweepOnce(ctx context.Context) {
	for _, cg := range r.Registered() {
		if _, err := os.Stat(filepath.Join(r.mount, filepath.FromSlash(cg))); errors.Is(err, os.ErrNotExist) {
			r.Unregister(ctx, cg)
			r.log.Info().Str(logfields.Cgroup, cg).Msg("agent cgroup gone: registration dropped")
		}
	}
}

// Registered lists the cgroups `firma run` registered.
func (r *Registry) Registered() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.registered))
	for cg := range r.registered {
		out = append(out, cg)
	}
	return out
}

// Resolve returns the agent covering the cgroup with the given id, and the cgroup's path.
func (r *Registry) Resolve(cgroupID uint64) (Agent, string, error) {
	p, err := r.pathOf(cgroupID)
	if err != nil {
		return Agent{}, "", err
	}
	now := time.Now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for q := p; ; q = path.Dir(q) {
		if e, ok := r.registered[q]; ok {
			return e.agent, p, nil
		}
		if e, ok := r.static[q]; ok {
			return e.agent, p, nil
		}
		// A registration withdrawn a moment ago still names its agent, and allows nothing.
		if d, ok := r.departed[q]; ok && now.Before(d.until) {
			return d.agent, p, fmt.Errorf("%w: cgroup %s", ErrDeparted, p)
		}
		if q == "/" {
			return Agent{}, p, fmt.Errorf("%w: cgroup %s", ErrUnknownAgent, p)
		}
	}
}

// pathOf finds a cgroup's path from its id (cgroupDirByID): exact, and it sees cgroups created after
// start-up.
func (r *Registry) pathOf(id uint64) (string, error) {
	r.mu.RLock()
	p, ok := r.paths[id]
	r.mu.RUnlock()
	if ok {
		return p, nil
	}
	abs, err := cgroupDirByID(r.mountFD, id)
	if err != nil {
		return "", err
	}
	rel, ok := strings.CutPrefix(abs, r.mount)
	if !ok || (rel != "" && rel[0] != '/') {
		return "", fmt.Errorf("%w: cgroup id %d is at %s, outside %s", ErrUnknownAgent, id, abs, r.mount)
	}
	p = cgroup.Canonical(rel)
	r.mu.Lock()
	r.remember(id, p)
	r.mu.Unlock()
	return p, nil
}

// remember caches a cgroup id's path; r.mu is held.
func (r *Registry) remember(id uint64, p string) {
	if len(r.paths) > 100_000 {
		clear(r.paths) // ids are never reused; this only bounds memory
	}
	r.paths[id] = p
}

// depart keeps a withdrawn registration for Departed; r.mu is held. Expired ones are dropped here,
// and at maxDeparted the oldest go first.
func (r *Registry) depart(cg string, a Agent, now time.Time) {
	a.Capability = nil // released with the registration; a departed agent is refused everything
	for k, d := range r.departed {
		if !now.Before(d.until) {
			delete(r.departed, k)
		}
	}
	for len(r.departed) >= maxDeparted {
		oldest := ""
		for k, d := range r.departed {
			if oldest == "" || d.until.Before(r.departed[oldest].until) {
				oldest = k
			}
		}
		delete(r.departed, oldest)
	}
	r.departed[cg] = departure{agent: a, until: now.Add(Departed)}
}

// Close releases every capability handle and the mount handle.
func (r *Registry) Close() error {
	r.mu.Lock()
	var errs []error
	for cg, e := range r.registered {
		errs = append(errs, e.release())
		delete(r.registered, cg)
	}
	for cg, e := range r.static {
		errs = append(errs, e.release())
		delete(r.static, cg)
	}
	r.mu.Unlock()
	if r.mountFD >= 0 {
		errs = append(errs, unix.Close(r.mountFD))
		r.mountFD = -1
	}
	return errors.Join(errs...)
}

// Exe resolves a process's executable while it lives ("" once it has gone).
func Exe(pid uint32) string {
	if pid == 0 {
		return ""
	}
	exe, err := os.Readlink("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(exe, " (deleted)")
}
