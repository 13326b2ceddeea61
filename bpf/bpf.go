// Package bpf owns firma's kernel programs: the C source (redirect.c), its committed bpf2go output,
// and a small typed loader that loads the programs with the sidecar's ports, attaches them to one
// parent cgroup (every descendant is enforced), pins links and maps so that enforcement outlives the
// sidecar, looks up the origin record of a redirected flow, and detaches on explicit cleanup.
//
// It knows nothing about policy: it answers "who connected where", never "may they".
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
)

// Config is what the programs are loaded and attached with.
type Config struct {
	Cgroup      string // absolute path of the parent cgroup directory
	PinDir      string // bpffs directory for pinned links and maps
	SidecarPort uint16 // transparent TCP listener on 127.0.0.1 and [::1]
	DNSPort     uint16 // resolver on 127.0.0.1 and [::1], UDP and TCP; 0 refuses DNS
	IPv6        bool   // redirect native IPv6 to [::1]; false refuses it
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
	}
	return nil
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
