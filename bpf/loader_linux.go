//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/internal/cgroup"
	"github.com/openfirma/firma/internal/logfields"
)

// bpffsRoot is where bpffs is conventionally mounted; Attach mounts it there when it is missing.
const bpffsRoot = "/sys/fs/bpf"

// lsmPath lists the kernel's active LSMs. A variable so that a test can stand in a kernel without
// BPF LSM.
var lsmPath = "/sys/kernel/security/lsm"

// Programs is a loaded, attached set of firma's programs. It holds a handle on every link it
// attached, so that removing a pin does not detach anything while the sidecar runs (Check reports
// the missing pin and Repair restores it). Closing it releases this process's handles only: the
// links stay pinned, so the kernel keeps enforcing after the sidecar exits or crashes.
type Programs struct {
	cfg      Config
	objs     redirectObjects
	guard    guardObjects
	features Features
	log      zerolog.Logger

	mu    sync.Mutex // links
	links []*attachment
}

// attachment is one program this process attached, and the link it holds.
type attachment struct {
	name   string
	pin    string
	prog   *ebpf.Program
	progID ebpf.ProgramID
	attach ebpf.AttachType
	link   link.Link
}

// Attach loads the programs configured by cfg and attaches them to cfg.Cgroup. Links and maps
// pinned by an earlier sidecar under cfg.PinDir are reused: a pinned link is switched to the new
// program atomically (no moment without enforcement), and pinned maps keep their records. Links
// pinned for another cgroup are moved to cfg.Cgroup. Attach also repairs what Check reports: a link
// detached, replaced or unpinned since is attached, switched or pinned again.
//
// The BPF LSM programs are optional: where the kernel lacks BPF LSM, or they fail to load or
// attach, Attach still succeeds and Features says what is missing and why.
func Attach(cfg Config, log zerolog.Logger) (*Programs, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cgroupID, err := CgroupID(cfg.Cgroup)
	if err != nil {
		return nil, err
	}
	if err := ensurePinDir(cfg.PinDir); err != nil {
		return nil, err
	}

	spec, err := loadRedirect()
	if err != nil {
		return nil, err
	}
	var inbound [MaxInboundPorts]uint16
	copy(inbound[:], cfg.InboundPorts)
	if err := setVariables(spec, map[string]any{
		redirectVarSidecarPort:  cfg.SidecarPort,
		redirectVarDnsPort:      cfg.DNSPort,
		redirectVarIpv6Enabled:  boolByte(cfg.IPv6),
		redirectVarInboundPorts: inbound,
	}, cfg); err != nil {
		return nil, err
	}

	p := &Programs{cfg: cfg, log: log}
	if err := loadPinned(spec, &p.objs, cfg.PinDir, log); err != nil {
		return nil, fmt.Errorf("loading programs: %w", verifierDetail(err))
	}
	for _, a := range p.required(spec) {
		if err := a.attachTo(cfg, cgroupID, log); err != nil {
			p.Close()
			return nil, err
		}
		p.links = append(p.links, a)
	}
	p.attachGuard(cgroupID)
	return p, nil
}

// setVariables sets the load-time settings of a spec; the refusal rate limit is common to both.
func setVariables(spec *ebpf.CollectionSpec, settings map[string]any, cfg Config) error {
	cost, burst := cfg.rateLimit()
	settings[redirectVarRefusalCostNs] = cost
	settings[redirectVarRefusalBurstNs] = burst
	for name, v := range settings {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	return nil
}

// loadPinned loads spec's objects into to, reusing maps pinned under pinDir. Maps that an older
// firma pinned with another layout cannot be read by these programs: they are replaced with fresh
// ones (flows in flight are refused, never let through).
func loadPinned(spec *ebpf.CollectionSpec, to any, pinDir string, log zerolog.Logger) error {
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	err := spec.LoadAndAssign(to, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		log.Warn().Err(err).Str(logfields.PinDir, pinDir).Msg("replacing incompatible pinned maps")
		for name := range spec.Maps {
			os.Remove(filepath.Join(pinDir, name))
		}
		err = spec.LoadAndAssign(to, opts)
	}
	return err
}

// required lists the cgroup programs, every one of which must be attached.
func (p *Programs) required(spec *ebpf.CollectionSpec) []*attachment {
	progs := []namedProgram{
		{redirectProgFirmaSockCreate, p.objs.FirmaSockCreate},
		{redirectProgFirmaConnect4, p.objs.FirmaConnect4},
		{redirectProgFirmaConnect6, p.objs.FirmaConnect6},
		{redirectProgFirmaSendmsg4, p.objs.FirmaSendmsg4},
		{redirectProgFirmaSendmsg6, p.objs.FirmaSendmsg6},
		{redirectProgFirmaRecvmsg4, p.objs.FirmaRecvmsg4},
		{redirectProgFirmaRecvmsg6, p.objs.FirmaRecvmsg6},
		{redirectProgFirmaGetpeername4, p.objs.FirmaGetpeername4},
		{redirectProgFirmaGetpeername6, p.objs.FirmaGetpeername6},
		{redirectProgFirmaSockops, p.objs.FirmaSockops},
		{redirectProgFirmaSetsockopt, p.objs.FirmaSetsockopt},
		{redirectProgFirmaBind4, p.objs.FirmaBind4},
		{redirectProgFirmaBind6, p.objs.FirmaBind6},
		{redirectProgFirmaPostBind4, p.objs.FirmaPostBind4},
		{redirectProgFirmaPostBind6, p.objs.FirmaPostBind6},
		{redirectProgFirmaEgress, p.objs.FirmaEgress},
		{redirectProgFirmaIngress, p.objs.FirmaIngress},
	}
	out := make([]*attachment, 0, len(progs))
	for _, pr := range progs {
		out = append(out, newAttachment(p.cfg, pr.name, pr.prog, spec.Programs[pr.name].AttachType))
	}
	return out
}

type namedProgram struct {
	name string
	prog *ebpf.Program
}

func newAttachment(cfg Config, name string, prog *ebpf.Program, at ebpf.AttachType) *attachment {
	a := &attachment{name: name, pin: filepath.Join(cfg.PinDir, "links", name), prog: prog, attach: at}
	if info, err := prog.Info(); err == nil {
		a.progID, _ = info.ID()
	}
	return a
}

// guardFeature is the protection each BPF LSM program provides.
var guardFeature = map[string]func(*Features) *bool{
	guardProgFirmaSocketCreate:     func(f *Features) *bool { return &f.SocketFamilies },
	guardProgFirmaSocketSetsockopt: func(f *Features) *bool { return &f.CompatSockopt },
	guardProgFirmaBpf:              func(f *Features) *bool { return &f.BPFSyscall },
	guardProgFirmaTunDevCreate:     func(f *Features) *bool { return &f.TunDevices },
	guardProgFirmaTunDevOpen:       func(f *Features) *bool { return &f.TunDevices },
}

// attachGuard loads and attaches the BPF LSM programs where the kernel has BPF LSM. It never fails:
// what it could not do is recorded in p.features.
func (p *Programs) attachGuard(cgroupID uint64) {
	f := &p.features
	active, err := lsmActive()
	switch {
	case err != nil:
		// Without securityfs there is no telling; attaching is harmless either way, but the
		// protections are not claimed.
		f.Missing = append(f.Missing, fmt.Sprintf("cannot confirm that BPF LSM is active: %v", err))
	case !active:
		f.Missing = append(f.Missing, fmt.Sprintf("BPF LSM is not active (no \"bpf\" in %s; boot with lsm=…,bpf)", lsmPath))
		return
	}
	spec, err := loadGuard()
	if err == nil {
		err = setVariables(spec, map[string]any{}, p.cfg)
	}
	if err == nil {
		err = spec.LoadAndAssign(&p.guard, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
			guardMapCounters:       p.objs.Counters,
			guardMapRefusals:       p.objs.Refusals,
			guardMapRefusalBuckets: p.objs.RefusalBuckets,
		}})
	}
	if err != nil {
		f.Missing = append(f.Missing, "loading BPF LSM programs: "+guardLoadError(err))
		return
	}
	progs := []namedProgram{
		{guardProgFirmaSocketCreate, p.guard.FirmaSocketCreate},
		{guardProgFirmaSocketSetsockopt, p.guard.FirmaSocketSetsockopt},
		{guardProgFirmaBpf, p.guard.FirmaBpf},
		{guardProgFirmaTunDevCreate, p.guard.FirmaTunDevCreate},
		{guardProgFirmaTunDevOpen, p.guard.FirmaTunDevOpen},
	}
	attached := map[string]bool{}
	for _, pr := range progs {
		a := newAttachment(p.cfg, pr.name, pr.prog, ebpf.AttachLSMCgroup)
		if err := a.attachTo(p.cfg, cgroupID, p.log); err != nil {
			f.Missing = append(f.Missing, err.Error())
			continue
		}
		attached[pr.name] = true
		p.links = append(p.links, a)
	}
	if !active {
		return
	}
	// A protection is in force when every program it takes is attached.
	inForce := map[*bool]bool{}
	for name, feature := range guardFeature {
		ptr := feature(f)
		if _, seen := inForce[ptr]; !seen {
			inForce[ptr] = true
		}
		inForce[ptr] = inForce[ptr] && attached[name]
	}
	for ptr, ok := range inForce {
		*ptr = ok
	}
}

// lsmActive reports whether "bpf" is among the kernel's active LSMs.
func lsmActive() (bool, error) {
	b, err := os.ReadFile(lsmPath)
	if err != nil {
		return false, err
	}
	for _, m := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if m == "bpf" {
			return true, nil
		}
	}
	return false, nil
}

// attachTo makes a.pin a link from cfg.Cgroup to a.prog and keeps a handle on it. A link pinned
// there already is switched to a.prog without detaching it; one pinned for another cgroup, attach
// point, or that is no longer attached, is replaced by a new link, attached before the old one is
// dropped.
func (a *attachment) attachTo(cfg Config, cgroupID uint64, log zerolog.Logger) error {
	old, err := link.LoadPinnedLink(a.pin, nil)
	switch {
	case err == nil:
		if sameAttachment(old, cgroupID, a.attach) {
			if err := old.Update(a.prog); err == nil {
				a.link = old
				log.Debug().Str(logfields.Program, a.name).Msg("reused pinned link")
				return nil
			}
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("loading pinned link %s: %w", a.pin, err)
	}

	l, err := link.AttachCgroup(link.CgroupOptions{Path: cfg.Cgroup, Attach: a.attach, Program: a.prog})
	if err != nil {
		if old != nil {
			old.Close()
		}
		return fmt.Errorf("attaching %s to %s: %w", a.name, cfg.Cgroup, err)
	}
	if old != nil {
		old.Unpin()
		old.Close()
	}
	if err := os.Remove(a.pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.Close()
		return fmt.Errorf("unpinning %s: %w", a.pin, err)
	}
	if err := l.Pin(a.pin); err != nil {
		l.Close()
		return fmt.Errorf("pinning %s: %w", a.pin, err)
	}
	if a.link != nil {
		a.link.Close()
	}
	a.link = l
	log.Debug().Str(logfields.Program, a.name).Str(logfields.Cgroup, cfg.Cgroup).Msg("attached")
	return nil
}

func sameAttachment(l link.Link, cgroupID uint64, at ebpf.AttachType) bool {
	info, err := l.Info()
	if err != nil || info.Type != link.CgroupType {
		return false
	}
	cg := info.Cgroup()
	return cg != nil && cg.CgroupId == cgroupID && ebpf.AttachType(cg.AttachType) == at
}

// Close releases this process's handles. The pinned links keep enforcing.
func (p *Programs) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, a := range p.links {
		errs = append(errs, a.link.Close())
	}
	p.links = nil
	errs = append(errs, p.guard.Close(), p.objs.Close())
	return errors.Join(errs...)
}

// Features says which optional (BPF LSM) protections Attach put in force.
func (p *Programs) Features() Features { return p.features }

// Check verifies that every link this process attached is still pinned, attached to the configured
// cgroup at its attach point, and running this process's program. The sidecar calls it
// periodically; Status.Err names whatever is not in force.
func (p *Programs) Check() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Status{Cgroup: p.cfg.Cgroup, Features: p.features}
	cgroupID, cgErr := CgroupID(p.cfg.Cgroup)
	for _, a := range p.links {
		st.Links = append(st.Links, a.status(cgroupID, cgErr))
	}
	return st
}

func (a *attachment) status(cgroupID uint64, cgErr error) LinkStatus {
	ls := LinkStatus{Program: a.name, Pin: a.pin}
	info, err := a.link.Info()
	if err != nil {
		ls.State, ls.Detail = LinkMissing, err.Error()
		return ls
	}
	ls.State, ls.Detail = judgeLink(info, cgroupID, cgErr, a.attach)
	if ls.State != LinkOK {
		return ls
	}
	if info.Program != a.progID {
		ls.State, ls.Detail = LinkReplaced, fmt.Sprintf("runs program %d, not %d", info.Program, a.progID)
		return ls
	}
	pinned, err := link.LoadPinnedLink(a.pin, nil)
	if err != nil {
		ls.State, ls.Detail = LinkUnpinned, err.Error()
		return ls
	}
	defer pinned.Close()
	if pi, err := pinned.Info(); err != nil || pi.ID != info.ID {
		ls.State, ls.Detail = LinkUnpinned, fmt.Sprintf("%s holds another link", a.pin)
	}
	return ls
}

// judgeLink compares a link's cgroup attachment with the configured one.
func judgeLink(info *link.Info, cgroupID uint64, cgErr error, at ebpf.AttachType) (LinkState, string) {
	cg := info.Cgroup()
	switch {
	case cg == nil:
		return LinkMoved, fmt.Sprintf("link of type %d, not a cgroup link", info.Type)
	case cg.CgroupId == 0:
		return LinkDetached, ""
	case cgErr != nil:
		return LinkMoved, cgErr.Error()
	case cg.CgroupId != cgroupID:
		return LinkMoved, fmt.Sprintf("attached to cgroup id %d, not %d", cg.CgroupId, cgroupID)
	case ebpf.AttachType(cg.AttachType) != at:
		return LinkMoved, fmt.Sprintf("attached as %s, not %s", ebpf.AttachType(cg.AttachType), at)
	}
	return LinkOK, ""
}

// Repair puts back in force every link Check finds broken: a detached or moved link is replaced by
// a new one, a replaced program is switched back, a missing pin is pinned again (with the map pins
// that keep records across restarts). It returns what it could not repair.
func (p *Programs) Repair() error {
	if err := ensurePinDir(p.cfg.PinDir); err != nil {
		return err
	}
	cgroupID, err := CgroupID(p.cfg.Cgroup)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, a := range p.links {
		if err := a.repair(p.cfg, cgroupID, p.log); err != nil {
			errs = append(errs, err)
		}
	}
	for name, m := range map[string]*ebpf.Map{
		redirectMapCounters: p.objs.Counters, redirectMapOrigins: p.objs.Origins,
		redirectMapSkOrigin: p.objs.SkOrigin, redirectMapSkOwner: p.objs.SkOwner,
		redirectMapRefusals: p.objs.Refusals, redirectMapRefusalBuckets: p.objs.RefusalBuckets,
	} {
		pin := filepath.Join(p.cfg.PinDir, name)
		if _, err := os.Stat(pin); err == nil {
			continue
		}
		m.Unpin()
		if err := m.Pin(pin); err != nil {
			errs = append(errs, fmt.Errorf("pinning map %s: %w", pin, err))
		}
	}
	return errors.Join(errs...)
}

func (a *attachment) repair(cfg Config, cgroupID uint64, log zerolog.Logger) error {
	for range 3 { // a link can be both replaced and unpinned
		st := a.status(cgroupID, nil)
		var err error
		switch st.State {
		case LinkOK:
			return nil
		case LinkReplaced:
			err = a.link.Update(a.prog)
		case LinkUnpinned:
			os.Remove(a.pin)
			a.link.Unpin()
			err = a.link.Pin(a.pin)
		default:
			err = a.attachTo(cfg, cgroupID, log)
		}
		if err != nil {
			return fmt.Errorf("repairing %s (%s): %w", a.name, st.State, err)
		}
		log.Warn().Str(logfields.Program, a.name).Str(logfields.Status, st.State.String()).Msg("repaired link")
	}
	return nil
}

// Lookup returns and removes the record of a redirected TCP flow by its agent-side address.
func (p *Programs) Lookup(peer netip.AddrPort) (Origin, error) {
	key := peerKey(peer, TCP)
	var o redirectOrigin
	if err := p.objs.Origins.LookupAndDelete(&key, &o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, ErrNoOrigin
		}
		return Origin{}, fmt.Errorf("origin lookup: %w", err)
	}
	return toOrigin(o), nil
}

// LookupDNS returns the record of a redirected DNS socket (UDP, or TCP to port 53) by its
// agent-side address, keeping it for the socket's next query.
func (p *Programs) LookupDNS(peer netip.AddrPort, proto Proto) (Origin, error) {
	key := peerKey(peer, proto)
	var o redirectOrigin
	if err := p.objs.Origins.Lookup(&key, &o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, ErrNoOrigin
		}
		return Origin{}, fmt.Errorf("origin lookup: %w", err)
	}
	return toOrigin(o), nil
}

// Counters sums the per-CPU kernel counters by name (redirect_tcp, refuse_self, drop_egress, …).
func (p *Programs) Counters() (map[string]uint64, error) {
	out := map[string]uint64{}
	for c := redirectCounter(0); c < redirectCounterCNT_MAX; c++ {
		var perCPU []uint64
		if err := p.objs.Counters.Lookup(uint32(c), &perCPU); err != nil {
			return nil, fmt.Errorf("reading counter %d: %w", c, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[counterName(c)] = sum
	}
	return out, nil
}

func counterName(c redirectCounter) string {
	if n, ok := counterNames[c]; ok {
		return n
	}
	return fmt.Sprintf("counter_%d", c)
}

// counterNames names the kernel's enum counter values (the enum itself is generated from common.h).
var counterNames = map[redirectCounter]string{
	redirectCounterCNT_REDIRECT_TCP:        "redirect_tcp",
	redirectCounterCNT_REDIRECT_DNS:        "redirect_dns",
	redirectCounterCNT_PUBLISHED:           "published",
	redirectCounterCNT_REFUSE_UNCONFIGURED: "refuse_unconfigured",
	redirectCounterCNT_REFUSE_SELF:         "refuse_self",
	redirectCounterCNT_REFUSE_UDP:          "refuse_udp",
	redirectCounterCNT_REFUSE_IPV6:         "refuse_ipv6",
	redirectCounterCNT_REFUSE_PROTO:        "refuse_proto",
	redirectCounterCNT_REFUSE_STORAGE:      "refuse_storage",
	redirectCounterCNT_PUBLISH_FAILED:      "publish_failed",
	redirectCounterCNT_REFUSE_FAMILY:       "refuse_family",
	redirectCounterCNT_REFUSE_SOCKOPT:      "refuse_sockopt",
	redirectCounterCNT_REFUSE_BIND:         "refuse_bind",
	redirectCounterCNT_DROP_EGRESS:         "drop_egress",
	redirectCounterCNT_DROP_INGRESS:        "drop_ingress",
	redirectCounterCNT_REFUSE_BPF:          "refuse_bpf",
	redirectCounterCNT_REFUSE_TUN:          "refuse_tun",
	redirectCounterCNT_EVENT_SENT:          "refusal_events",
	redirectCounterCNT_EVENT_SUPPRESSED:    "refusal_events_suppressed",
	redirectCounterCNT_EVENT_LOST:          "refusal_events_lost",
}

// pinnedMaps are the maps Attach pins under the pin dir.
var pinnedMaps = []string{
	redirectMapOrigins, redirectMapSkOrigin, redirectMapSkOwner, redirectMapCounters,
	redirectMapRefusals, redirectMapRefusalBuckets,
}

// Cleanup detaches everything pinned under pinDir and removes the pins: after it, the cgroup is no
// longer enforced. Only `firma sidecar --cleanup` calls it.
func Cleanup(pinDir string) error {
	var errs []error
	links, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, e := range links {
		pin := filepath.Join(pinDir, "links", e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("loading %s: %w", pin, err))
			continue
		}
		// Detach, not only unpin: a running sidecar holds its own handle on every link, which would
		// keep it attached.
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detaching %s: %w", pin, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", pin, err))
		}
		l.Close()
	}
	for _, name := range pinnedMaps {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{filepath.Join(pinDir, "links"), pinDir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Pinned reports whether links are pinned under pinDir (enforcement in place without a sidecar).
func Pinned(pinDir string) bool {
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	return err == nil && len(entries) > 0
}

// CgroupID is the id the kernel reports for a cgroup2 directory: its inode number.
func CgroupID(path string) (uint64, error) { return cgroup.ID(path) }

// ensurePinDir makes dir/links, on bpffs.
func ensurePinDir(dir string) error {
	if err := ensureBPFFS(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		return fmt.Errorf("creating pin dir: %w", err)
	}
	return nil
}

// ensureBPFFS makes sure dir can hold pins: its nearest existing ancestor must be on bpffs. When
// dir lives under /sys/fs/bpf and nothing is mounted there, bpffs is mounted (mode 0700).
func ensureBPFFS(dir string) error {
	p := filepath.Clean(dir)
	for {
		if _, err := os.Stat(p); err == nil {
			break
		}
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		p = parent
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil {
		return fmt.Errorf("pin dir %s: %w", dir, err)
	}
	if fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if p != bpffsRoot && !strings.HasPrefix(filepath.Clean(dir)+"/", bpffsRoot+"/") {
		return fmt.Errorf("pin dir %s is not on a bpf filesystem", dir)
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}

func peerKey(peer netip.AddrPort, proto Proto) redirectPeerKey {
	return redirectPeerKey{Addr: peer.Addr().As16(), Port: peer.Port(), Proto: uint8(proto)}
}

func toOrigin(o redirectOrigin) Origin {
	family := 4
	if o.Family == unix.AF_INET6 {
		family = 6
	}
	return Origin{
		Dst:      netip.AddrPortFrom(netip.AddrFrom16(o.Addr).Unmap(), o.Port),
		Family:   family,
		Proto:    Proto(o.Proto),
		PID:      o.Who.Pid,
		TID:      o.Who.Tid,
		UID:      o.Who.Uid,
		GID:      o.Who.Gid,
		CgroupID: o.CgroupId,
		Cookie:   o.Cookie,
		Comm:     commString(o.Who.Comm),
	}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// verifierDetail includes the verifier log's tail in a load error, which is otherwise just EACCES.
// memlockHint is what cilium/ebpf appends to every EPERM from a program load with an empty verifier
// log. On the kernels firma supports (5.11+) BPF memory is charged to the memory cgroup, not to
// RLIMIT_MEMLOCK, so the hint sends an operator the wrong way.
const memlockHint = " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)"

// guardLoadError says why the BPF LSM programs did not load. An EPERM before the verifier ran
// means the kernel (or the VM around it) refuses BPF LSM/trampoline programs outright.
func guardLoadError(err error) string {
	msg := strings.Replace(verifierDetail(err).Error(), memlockHint, "", 1)
	if errors.Is(err, unix.EPERM) {
		msg += " (this kernel refuses BPF LSM programs before verifying them)"
	}
	return msg
}

func verifierDetail(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w\n%+v", err, ve)
	}
	return err
}
