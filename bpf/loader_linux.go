//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/internal/logfields"
)

// bpffsRoot is where bpffs is conventionally mounted; Attach mounts it there when it is missing.
const bpffsRoot = "/sys/fs/bpf"

// Programs is a loaded, attached set of firma's programs. Closing it releases this process's handles
// only: the links stay pinned, so the kernel keeps enforcing after the sidecar exits or crashes.
type Programs struct {
	objs redirectObjects
	log  zerolog.Logger
}

// Attach loads the programs configured by cfg and attaches them to cfg.Cgroup. Links and maps
// pinned by an earlier sidecar under cfg.PinDir are reused: a pinned link is switched to the new
// program atomically (no moment without enforcement), and pinned maps keep their records. Links
// pinned for another cgroup are moved to cfg.Cgroup.
func Attach(cfg Config, log zerolog.Logger) (*Programs, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cgroupID, err := CgroupID(cfg.Cgroup)
	if err != nil {
		return nil, err
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("creating pin dir: %w", err)
	}

	spec, err := loadRedirect()
	if err != nil {
		return nil, err
	}
	settings := map[string]any{
		"sidecar_port": cfg.SidecarPort,
		"dns_port":     cfg.DNSPort,
		"ipv6_enabled": boolByte(cfg.IPv6),
	}
	for name, v := range settings {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
	}

	p := &Programs{log: log}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	err = spec.LoadAndAssign(&p.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// An older firma pinned maps of another layout. Its records cannot be read by these
		// programs: start fresh maps (flows in flight are refused, never let through).
		log.Warn().Err(err).Str(logfields.PinDir, cfg.PinDir).Msg("replacing incompatible pinned maps")
		for name := range spec.Maps {
			os.Remove(filepath.Join(cfg.PinDir, name))
		}
		err = spec.LoadAndAssign(&p.objs, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("loading programs: %w", verifierDetail(err))
	}

	for _, prog := range p.programs(spec) {
		if err := attachOne(cfg, cgroupID, prog, log); err != nil {
			p.objs.Close()
			return nil, err
		}
	}
	return p, nil
}

type program struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
}

func (p *Programs) programs(spec *ebpf.CollectionSpec) []program {
	progs := []struct {
		name string
		prog *ebpf.Program
	}{
		{"firma_sock_create", p.objs.FirmaSockCreate},
		{"firma_connect4", p.objs.FirmaConnect4},
		{"firma_connect6", p.objs.FirmaConnect6},
		{"firma_sendmsg4", p.objs.FirmaSendmsg4},
		{"firma_sendmsg6", p.objs.FirmaSendmsg6},
		{"firma_recvmsg4", p.objs.FirmaRecvmsg4},
		{"firma_recvmsg6", p.objs.FirmaRecvmsg6},
		{"firma_getpeername4", p.objs.FirmaGetpeername4},
		{"firma_getpeername6", p.objs.FirmaGetpeername6},
		{"firma_sockops", p.objs.FirmaSockops},
		{"firma_egress", p.objs.FirmaEgress},
	}
	out := make([]program, 0, len(progs))
	for _, pr := range progs {
		out = append(out, program{name: pr.name, prog: pr.prog, attach: spec.Programs[pr.name].AttachType})
	}
	return out
}

// attachOne makes pinDir/links/<name> a link from cfg.Cgroup to prog, replacing whatever program a
// pinned link ran before without detaching it.
func attachOne(cfg Config, cgroupID uint64, pr program, log zerolog.Logger) error {
	pin := filepath.Join(cfg.PinDir, "links", pr.name)
	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		if sameAttachment(old, cgroupID, pr.attach) {
			defer old.Close()
			if err := old.Update(pr.prog); err != nil {
				return fmt.Errorf("updating pinned link %s: %w", pin, err)
			}
			log.Debug().Str(logfields.Program, pr.name).Msg("reused pinned link")
			return nil
		}
		// Pinned for another cgroup or attach point: attach the new link first, then drop the old.
		defer func() {
			old.Unpin()
			old.Close()
		}()
	case errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("loading pinned link %s: %w", pin, err)
	}

	l, err := link.AttachCgroup(link.CgroupOptions{Path: cfg.Cgroup, Attach: pr.attach, Program: pr.prog})
	if err != nil {
		return fmt.Errorf("attaching %s to %s: %w", pr.name, cfg.Cgroup, err)
	}
	defer l.Close()
	if old != nil {
		if err := old.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpinning %s: %w", pin, err)
		}
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pinning %s: %w", pin, err)
	}
	log.Debug().Str(logfields.Program, pr.name).Str(logfields.Cgroup, cfg.Cgroup).Msg("attached")
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
func (p *Programs) Close() error { return p.objs.Close() }

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

// Counters sums the per-CPU kernel counters by name (redirect_tcp, refuse_self, …).
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

// counterNames names the kernel's enum counter values (the enum itself is generated from redirect.c).
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
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", pin, err))
		}
		l.Close()
	}
	for _, name := range []string{redirectMapOrigins, redirectMapSkOrigin, redirectMapCounters} {
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
func CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not on a cgroup2 filesystem", path)
	}
	return st.Ino, nil
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
	comm := make([]byte, 0, len(o.Comm))
	for _, c := range o.Comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	return Origin{
		Dst:      netip.AddrPortFrom(netip.AddrFrom16(o.Addr).Unmap(), o.Port),
		Family:   family,
		Proto:    Proto(o.Proto),
		PID:      o.Pid,
		TID:      o.Tid,
		UID:      o.Uid,
		GID:      o.Gid,
		CgroupID: o.CgroupId,
		Cookie:   o.Cookie,
		Comm:     string(comm),
	}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// verifierDetail includes the verifier log's tail in a load error, which is otherwise just EACCES.
func verifierDetail(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w\n%+v", err, ve)
	}
	return err
}
