package daemon

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon/agents"
	"github.com/openfirma/firma/daemon/control"
	"github.com/openfirma/firma/daemon/judge"
	"github.com/openfirma/firma/daemon/metrics"
	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/proc"
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

// Refused records what firma run's seccomp filter refused a process, as a kernel refusal: the
// process waits in the refused call while the runner reports it, so /proc names it exactly, and
// its agent is the one its cgroup belongs to — never what the report says. Only a process in the
// enforced cgroup tree is recorded (the control socket's peer is already root and outside it).
func (r registry) Refused(ctx context.Context, ref control.Refusal) error {
	s := r.s
	cg, err := cgroup.OfProcess(int32(ref.PID))
	if err != nil {
		return fmt.Errorf("pid %d: %w", ref.PID, err)
	}
	cg = cgroup.Canonical(cg)
	if enforced := cgroup.Canonical(s.cfg.Transparent.Cgroup); !s.cfg.Transparent.Enabled || !cgroup.Under(cg, enforced) {
		return fmt.Errorf("pid %d is in cgroup %s, not below the enforced %s", ref.PID, cg, enforced)
	}
	id, err := cgroup.ID(filepath.Join(s.mount, filepath.FromSlash(cg)))
	if err != nil {
		return fmt.Errorf("pid %d: %w", ref.PID, err)
	}
	// The kernel names the calling thread: the record names its process, as the kernel's own do.
	o := bpf.Origin{PID: uint32(ref.PID), CgroupID: id}
	var tgid uint32
	tgid, o.UID, o.GID, o.Comm = procIdentity(ref.PID)
	if tgid != 0 {
		o.PID = tgid
	}
	what := "syscall: " + ref.Syscall
	if ref.Syscall == "socket" || ref.Syscall == "socketpair" {
		const typeMask = 0xf // SOCK_NONBLOCK and SOCK_CLOEXEC ride in the type
		what = "family: " + bpf.Refusal{Kind: bpf.RefusalFamily, Family: ref.Family, Type: ref.Type & typeMask, Protocol: ref.Protocol}.Detail()
		if ref.Syscall == "socketpair" {
			what = strings.Replace(what, "socket ", "socketpair ", 1)
		}
	}
	f := s.flowOf(o)
	in := judge.Intent{Method: "KERNEL", Transport: "kernel", Mode: judge.ModeKernel, Refuse: "sandbox refused " + what}
	s.judge.Decide(ctx, f, in)
	if ref.Suppressed > 0 {
		in.Refuse = fmt.Sprintf("sandbox refusals suppressed: %d more from this sandbox since its last report", ref.Suppressed)
		s.judge.Decide(ctx, f, in)
	}
	return nil
}

// procIdentity reads a thread's process id (tgid), real uid and gid and comm from /proc; what
// cannot be read is left zero.
func procIdentity(pid int) (tgid, uid, gid uint32, comm string) {
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil {
		comm = strings.TrimSuffix(string(b), "\n")
	}
	st, err := proc.StatusFields(strconv.Itoa(pid), "Tgid", "Uid", "Gid")
	if err != nil {
		return 0, 0, 0, comm
	}
	first := func(field string) uint32 { // Uid and Gid list real, effective, saved, fs: the real one
		f := strings.Fields(st[field])
		if len(f) == 0 {
			return 0
		}
		n, _ := strconv.ParseUint(f[0], 10, 32)
		return uint32(n)
	}
	return first("Tgid"), first("Uid"), first("Gid"), comm
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
	if e, err := metrics.ParseEndpoint(c.Metrics.ListenAddr); err == nil && e.Network == "unix" {
		paths = append(paths, e.Address) // /metrics names every agent and what it did
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
