package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/policies"
)

// ErrUnknownAgent means no static entry or registration covers a cgroup: the flow is denied.
var ErrUnknownAgent = errors.New("unknown agent")

// Agent is the identity the sidecar gives a cgroup subtree.
type Agent struct {
	ID             string
	SessionID      string
	Cgroup         string // the configured or registered cgroup, relative to the cgroup2 mount
	CapabilityFile string
	// Capability is the Stage 1 check for this agent; nil when capabilities are not enforced.
	Capability policies.Capability
	Registered bool // from `firma run`, not [[sidecar.agents]]
}

// Identities maps the cgroup id the kernel attests to an agent. Static entries come from
// [[sidecar.agents]]; `firma run` registers others at runtime. A cgroup is covered by the nearest
// ancestor (or itself) that has an entry, registrations before static entries.
type Identities struct {
	mount   string // cgroup2 mount point
	mountFD int

	mu         sync.RWMutex
	static     map[string]Agent
	registered map[string]Agent
	paths      map[uint64]string // cgroup id → path relative to the mount, learned on demand
}

// NewIdentities opens the cgroup2 mount for id → path lookups.
func NewIdentities(mount string, static []AgentConfig) (*Identities, error) {
	fd, err := unix.Open(mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup2 mount %s: %w", mount, err)
	}
	ids := &Identities{
		mount:      mount,
		mountFD:    fd,
		static:     map[string]Agent{},
		registered: map[string]Agent{},
		paths:      map[uint64]string{},
	}
	for _, a := range static {
		cg := cgroup.Canonical(a.Cgroup)
		ids.static[cg] = Agent{ID: a.AgentID, SessionID: a.SessionID, Cgroup: cg, CapabilityFile: a.CapabilityFile}
	}
	return ids, nil
}

// Close releases the mount handle.
func (ids *Identities) Close() error { return unix.Close(ids.mountFD) }

// SetCapability attaches a Stage 1 check to the static entry for cgroup.
func (ids *Identities) SetCapability(path string, c policies.Capability) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	cg := cgroup.Canonical(path)
	if a, ok := ids.static[cg]; ok {
		a.Capability = c
		ids.static[cg] = a
	}
}

// Register makes cgroup (and its descendants) the agent a. It replaces an earlier registration.
func (ids *Identities) Register(a Agent) {
	a.Cgroup = cgroup.Canonical(a.Cgroup)
	a.Registered = true
	ids.mu.Lock()
	ids.registered[a.Cgroup] = a
	ids.mu.Unlock()
}

// Unregister forgets a registration; it reports whether there was one.
func (ids *Identities) Unregister(path string) bool {
	cg := cgroup.Canonical(path)
	ids.mu.Lock()
	defer ids.mu.Unlock()
	_, ok := ids.registered[cg]
	delete(ids.registered, cg)
	return ok
}

// Resolve returns the agent covering the cgroup with the given id, and the cgroup's path.
func (ids *Identities) Resolve(cgroupID uint64) (Agent, string, error) {
	p, err := ids.pathOf(cgroupID)
	if err != nil {
		return Agent{}, "", err
	}
	ids.mu.RLock()
	defer ids.mu.RUnlock()
	for q := p; ; q = path.Dir(q) {
		if a, ok := ids.registered[q]; ok {
			return a, p, nil
		}
		if a, ok := ids.static[q]; ok {
			return a, p, nil
		}
		if q == "/" {
			return Agent{}, p, fmt.Errorf("%w: cgroup %s", ErrUnknownAgent, p)
		}
	}
}

// pathOf finds a cgroup's path from its id by opening it through a kernfs file handle (the id is
// the handle) and reading the path back: exact, and it sees cgroups created after start-up.
func (ids *Identities) pathOf(id uint64) (string, error) {
	ids.mu.RLock()
	p, ok := ids.paths[id]
	ids.mu.RUnlock()
	if ok {
		return p, nil
	}
	var handle [8]byte
	binary.NativeEndian.PutUint64(handle[:], id)
	const fileidKernfs = 0xfe
	fd, err := unix.OpenByHandleAt(ids.mountFD, unix.NewFileHandle(fileidKernfs, handle[:]), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("%w: cgroup id %d: %v", ErrUnknownAgent, id, err)
	}
	abs, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	unix.Close(fd)
	if err != nil {
		return "", fmt.Errorf("cgroup id %d: %w", id, err)
	}
	rel, ok := strings.CutPrefix(abs, ids.mount)
	if !ok || (rel != "" && rel[0] != '/') {
		return "", fmt.Errorf("%w: cgroup id %d is at %s, outside %s", ErrUnknownAgent, id, abs, ids.mount)
	}
	p = cgroup.Canonical(rel)
	ids.mu.Lock()
	if len(ids.paths) > 100_000 {
		clear(ids.paths) // ids are never reused; this only bounds memory
	}
	ids.paths[id] = p
	ids.mu.Unlock()
	return p, nil
}

// exeOf resolves a process's executable while it lives ("" once it has gone).
func exeOf(pid uint32) string {
	if pid == 0 {
		return ""
	}
	exe, err := os.Readlink("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(exe, " (deleted)")
}

// registeredCgroups lists the cgroups `firma run` registered.
func (ids *Identities) registeredCgroups() []string {
	ids.mu.RLock()
	defer ids.mu.RUnlock()
	out := make([]string, 0, len(ids.registered))
	for cg := range ids.registered {
		out = append(out, cg)
	}
	return out
}
