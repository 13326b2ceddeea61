package bpf

import (
	"fmt"
	"strings"
)

// LinkState is whether one of firma's links is in force.
type LinkState int

const (
	// LinkOK: pinned, attached to the configured cgroup at its attach point, running the
	// expected program.
	LinkOK LinkState = iota
	// LinkUnpinned: still attached (a handle holds it) but its pin is gone or names another link:
	// enforcement would end with the sidecar.
	LinkUnpinned
	// LinkDetached: no longer attached to any cgroup (bpftool link detach, BPF_LINK_DETACH).
	LinkDetached
	// LinkMoved: attached to another cgroup or attach point than configured.
	LinkMoved
	// LinkReplaced: attached where it should be, running another program.
	LinkReplaced
	// LinkMissing: there is no such link at all.
	LinkMissing
)

var linkStateNames = []string{"ok", "unpinned", "detached", "moved", "replaced", "missing"}

func (s LinkState) String() string {
	if int(s) >= 0 && int(s) < len(linkStateNames) {
		return linkStateNames[s]
	}
	return fmt.Sprintf("state %d", int(s))
}

// LinkStatus is the state of one program's link.
type LinkStatus struct {
	Program string // the program's name in the C source, e.g. "firma_egress"
	Pin     string // where its link is pinned
	State   LinkState
	Detail  string // what was found instead, for anything but LinkOK
}

// Status is what Check or Inspect found.
type Status struct {
	Cgroup   string
	Links    []LinkStatus
	Features Features
}

// OK is true when every expected link is in force.
func (s Status) OK() bool { return len(s.Broken()) == 0 }

// Broken lists the links that are not in force.
func (s Status) Broken() []LinkStatus {
	var out []LinkStatus
	for _, l := range s.Links {
		if l.State != LinkOK {
			out = append(out, l)
		}
	}
	return out
}

// Err is nil when every expected link is in force, else an error wrapping ErrNotInForce that names
// each link that is not and why.
func (s Status) Err() error {
	broken := s.Broken()
	if len(broken) == 0 {
		return nil
	}
	parts := make([]string, 0, len(broken))
	for _, l := range broken {
		p := l.Program + " " + l.State.String()
		if l.Detail != "" {
			p += " (" + l.Detail + ")"
		}
		parts = append(parts, p)
	}
	return fmt.Errorf("%w on %s: %d of %d links: %s", ErrNotInForce, s.Cgroup, len(broken), len(s.Links), strings.Join(parts, "; "))
}

// Features says which of the optional protections (BPF LSM) are in force. The network path — the
// redirect, the packet backstop, sockopt and bind refusals — does not depend on them.
type Features struct {
	// SocketFamilies: socket families other than inet, inet6 and unix are refused.
	SocketFamilies bool
	// CompatSockopt: route-changing socket options are refused on compat (32-bit) syscalls too;
	// without it only the packet backstop stops what such options would route.
	CompatSockopt bool
	// BPFSyscall: the bpf() syscall is refused, so an agent cannot detach or rewrite firma's
	// programs and maps.
	BPFSyscall bool
	// TunDevices: tun/tap devices can be neither created nor attached.
	TunDevices bool
	// Missing says why each missing protection is missing.
	Missing []string
}

// Complete is true when every optional protection is in force.
func (f Features) Complete() bool {
	return f.SocketFamilies && f.CompatSockopt && f.BPFSyscall && f.TunDevices
}

// String is one line for the startup log and `firma doctor`.
func (f Features) String() string {
	have := func(b bool) string {
		if b {
			return "refused"
		}
		return "NOT refused"
	}
	s := fmt.Sprintf("non-inet socket families %s; compat setsockopt %s; bpf() %s; tun/tap %s",
		have(f.SocketFamilies), have(f.CompatSockopt), have(f.BPFSyscall), have(f.TunDevices))
	if len(f.Missing) > 0 {
		s += " (" + strings.Join(f.Missing, "; ") + ")"
	}
	return s
}
