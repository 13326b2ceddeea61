// Package bpf owns firma's kernel programs: the C sources (redirect.c: cgroup programs; guard.c:
// BPF LSM programs; offload.c: the tunnel offload; common.h: what redirect.c and guard.c share),
// their committed bpf2go output, and a small typed loader. The loader loads the programs with the sidecar's ports, attaches them to one parent cgroup
// (every descendant is enforced), pins links and maps so that enforcement outlives the sidecar,
// looks up the origin record of a redirected flow, streams the kernel's refusals, checks that every
// link is still in force and repairs the ones that are not, and detaches on explicit cleanup.
//
// What the programs do, in one place (details at the top of redirect.c and guard.c):
//   - TCP and DNS from the enforced subtree are redirected to the sidecar on loopback; other UDP,
//     raw and other non-TCP/UDP inet sockets are refused.
//   - A backstop on every packet: only plain TCP/UDP routed over loopback to the sidecar's ports
//     leaves an enforced socket, and only packets from those ports (or to configured inbound
//     ports) reach one. Socket options that change routing are refused, and so is binding the
//     sidecar's ports.
//   - With BPF LSM: socket families other than inet, inet6 and unix, the bpf() syscall and tun/tap
//     devices are refused to the subtree; route-changing options are refused on compat syscalls too.
//   - Every refusal is counted and reported, rate-limited per cgroup.
//   - Offload (never pinned, gone with the sidecar): what the sidecar relays to an agent through an
//     allowed tunnel goes straight into the agent's socket instead of over a second loopback TCP
//     connection; why no more than that, and how order and memory stay bounded, is at the top of
//     offload.c.
//
// The sidecar runs outside the enforced subtree and is never affected by these programs. The
// package knows nothing about policy: it answers "who connected where" and "what was refused",
// never "may they".
package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
)

var (
	// ErrUnsupported is returned on systems without cgroup BPF.
	ErrUnsupported = errors.New("cgroup bpf is not supported on this system")
	// ErrNoOrigin means the kernel holds no record for a peer: it was not redirected by firma.
	ErrNoOrigin = errors.New("no origin record")
	// ErrNotInForce is returned (wrapped, with the details) by Status.Err when a link is missing,
	// detached, moved or runs another program.
	ErrNotInForce = errors.New("enforcement not in force")
)

// MaxInboundPorts is how many ports Config.InboundPorts may list.
const MaxInboundPorts = 16

// Defaults of the per-cgroup rate limit on refusal reports.
const (
	DefaultRefusalRate  = 20  // events per second, per cgroup
	DefaultRefusalBurst = 100 // events at once, per cgroup
)

// Config is what the programs are loaded and attached with.
type Config struct {
	Cgroup      string // absolute path of the parent cgroup directory
	PinDir      string // bpffs directory for pinned links and maps
	SidecarPort uint16 // transparent TCP listener on 127.0.0.1 and [::1]
	DNSPort     uint16 // resolver on 127.0.0.1 and [::1], UDP and TCP; 0 refuses DNS
	IPv6        bool   // redirect native IPv6 to [::1]; false refuses it
	// InboundPorts are ports on which enforced processes may accept TCP connections and UDP
	// datagrams from anywhere, and answer accepted TCP connections; everything else that arrives
	// for an enforced socket is dropped unless it comes from the sidecar. Default: none.
	InboundPorts []uint16
	// RefusalRate and RefusalBurst bound the refusal reports of one cgroup (events per second,
	// and at once); what they suppress is counted and delivered with the cgroup's next report.
	// Zero means the default.
	RefusalRate  uint32
	RefusalBurst uint32
}

func (c Config) validate() error {
	switch {
	case !filepath.IsAbs(c.Cgroup):
		return fmt.Errorf("cgroup %q is not an absolute path", c.Cgroup)
	case !filepath.IsAbs(c.PinDir):
		return fmt.Errorf("pin dir %q is not an absolute path", c.PinDir)
	case c.SidecarPort == 0:
		return errors.New("sidecar port is not set")
	case c.DNSPort == c.SidecarPort:
		return errors.New("dns port equals sidecar port")
	case len(c.InboundPorts) > MaxInboundPorts:
		return fmt.Errorf("%d inbound ports, at most %d", len(c.InboundPorts), MaxInboundPorts)
	}
	for _, p := range c.InboundPorts {
		switch p {
		case 0:
			return errors.New("inbound port 0")
		case c.SidecarPort, c.DNSPort:
			return fmt.Errorf("inbound port %d is the sidecar's", p)
		}
	}
	return nil
}

// rateLimit is the refusal rate limit as the kernel takes it: nanoseconds of credit per event and
// at most.
func (c Config) rateLimit() (costNS, burstNS uint64) {
	rate, burst := uint64(c.RefusalRate), uint64(c.RefusalBurst)
	if rate == 0 {
		rate = DefaultRefusalRate
	}
	if burst == 0 {
		burst = DefaultRefusalBurst
	}
	costNS = max(uint64(1e9)/rate, 1)
	return costNS, burst * costNS
}

// Proto is a flow's transport protocol, as the kernel records it.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

// Origin is what the kernel attested about a redirected flow when the agent connected.
type Origin struct {
	Dst      netip.AddrPort // where the agent asked to go (IPv4 unmapped)
	Family   int            // 4 or 6: the socket family the agent used
	Proto    Proto
	PID      uint32 // thread group id of the connecting process
	TID      uint32
	UID      uint32
	GID      uint32
	CgroupID uint64
	Cookie   uint64
	Comm     string
}

// Origins finds the record of a redirected flow by the agent-side address that the sidecar sees
// as its peer. The sidecar depends on this interface so that it can be tested without a kernel.
type Origins interface {
	// Lookup returns the record for a TCP peer and removes it (each flow is accepted once).
	Lookup(peer netip.AddrPort) (Origin, error)
	// LookupDNS returns the record for a DNS peer and keeps it: one socket sends many queries.
	LookupDNS(peer netip.AddrPort, proto Proto) (Origin, error)
}
