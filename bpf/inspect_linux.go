//go:build linux

package bpf

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Inspect reports, without loading or changing anything, whether the links pinned under
// cfg.PinDir are in force on cfg.Cgroup: pinned, attached there at their attach point, and running
// a program of this firma build (same name and tag). `firma doctor` calls it; a running sidecar
// calls (*Programs).Check, which also knows the exact programs it loaded.
//
// Every cgroup program must be there. The BPF LSM programs are optional: those missing are
// reported in Features, not as broken links.
func Inspect(cfg Config) Status {
	st := Status{Cgroup: cfg.Cgroup}
	cgroupID, cgErr := CgroupID(cfg.Cgroup)
	required, err := loadRedirect()
	if err != nil {
		st.Links = append(st.Links, LinkStatus{Program: "redirect", State: LinkMissing, Detail: err.Error()})
		return st
	}
	for _, name := range sortedNames(required) {
		st.Links = append(st.Links, inspectLink(cfg, name, required.Programs[name], cgroupID, cgErr))
	}

	guard, err := loadGuard()
	if err != nil {
		st.Features.Missing = append(st.Features.Missing, err.Error())
		return st
	}
	inForce := map[*bool]bool{}
	for _, name := range sortedNames(guard) {
		ls := inspectLink(cfg, name, guard.Programs[name], cgroupID, cgErr)
		ptr := guardFeature[name](&st.Features)
		if _, seen := inForce[ptr]; !seen {
			inForce[ptr] = true
		}
		inForce[ptr] = inForce[ptr] && ls.State == LinkOK
		switch ls.State {
		case LinkOK:
		case LinkMissing:
			st.Features.Missing = append(st.Features.Missing, name+" not attached")
		default:
			st.Links = append(st.Links, ls) // attached once, and tampered with since
		}
	}
	for ptr, ok := range inForce {
		*ptr = ok
	}
	return st
}

func sortedNames(spec *ebpf.CollectionSpec) []string {
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func inspectLink(cfg Config, name string, ps *ebpf.ProgramSpec, cgroupID uint64, cgErr error) LinkStatus {
	ls := LinkStatus{Program: name, Pin: filepath.Join(cfg.PinDir, "links", name)}
	l, err := link.LoadPinnedLink(ls.Pin, nil)
	if err != nil {
		ls.State, ls.Detail = LinkMissing, err.Error()
		return ls
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		ls.State, ls.Detail = LinkMissing, err.Error()
		return ls
	}
	if ls.State, ls.Detail = judgeLink(info, cgroupID, cgErr, ps.AttachType); ls.State != LinkOK {
		return ls
	}
	ls.State, ls.Detail = judgeProgram(info.Program, ps)
	return ls
}

// judgeProgram checks that the program with id is ps by name and type. Without the exact
// programs a sidecar loaded, that is as far as an outside look can go: the running sidecar's Check
// compares program ids.
func judgeProgram(id ebpf.ProgramID, ps *ebpf.ProgramSpec) (LinkState, string) {
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return LinkReplaced, fmt.Sprintf("program %d: %v", id, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return LinkReplaced, fmt.Sprintf("program %d: %v", id, err)
	}
	// The kernel keeps 15 bytes of a name.
	if info.Name == "" || !strings.HasPrefix(ps.Name, info.Name) || info.Type != ps.Type {
		return LinkReplaced, fmt.Sprintf("runs program %d %q of type %s", id, info.Name, info.Type)
	}
	return LinkOK, ""
}
