//go:build linux

package doctor

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/link"

	"github.com/openfirma/firma/bpf"
	"github.com/openfirma/firma/daemon"
	"github.com/openfirma/firma/internal/cgroup"
)

// enforcement checks the kernel side of the sidecar: the enforced cgroup, the pins, the programs
// attached to that cgroup, and the listeners the programs redirect to.
func enforcement(s *daemon.Config) []Check {
	var checks []Check
	if !s.Transparent.Enabled {
		checks = append(checks, ok("sidecar.pins", "[sidecar.transparent] enabled = false: no kernel enforcement (explicit proxy only)"))
	} else {
		checks = append(checks, pins(s.Transparent.PinDir), programs(s))
	}
	return append(checks, listeners(s))
}

func pins(pinDir string) Check {
	const name = "sidecar.pins"
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if err != nil || len(entries) == 0 {
		return fail(name, "start the sidecar: it attaches and pins the programs (they then enforce even while it is down)",
			"no links pinned under %s: agents in the enforced cgroup are not redirected", pinDir)
	}
	maps, _ := os.ReadDir(pinDir)
	var mapNames []string
	for _, m := range maps {
		if !m.IsDir() {
			mapNames = append(mapNames, m.Name())
		}
	}
	return ok(name, "%d links and maps %s under %s", len(entries), strings.Join(mapNames, ", "), pinDir)
}

// programs reads every pinned link and checks that it is attached to the configured cgroup.
// TODO(lead): move into the bpf package (bpf.Attached(pinDir, cgroup)) with its program list.
func programs(s *daemon.Config) Check {
	const name = "sidecar.programs"
	rel, err := cgroupPath(s)
	if err != nil {
		return fail(name, "fix [sidecar.transparent] cgroup", "%v", err)
	}
	mount, err := cgroup.FindV2Mount()
	if err != nil {
		return fail(name, "mount cgroup2", "%v", err)
	}
	parent := filepath.Join(mount, filepath.FromSlash(rel))
	want, err := bpf.CgroupID(parent)
	if err != nil {
		return fail(name, "start the sidecar: it creates the enforced cgroup", "enforced cgroup: %v", err)
	}
	dir := filepath.Join(s.Transparent.PinDir, "links")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fail(name, "start the sidecar", "%v", err)
	}
	var attached, elsewhere, broken []string
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			broken = append(broken, fmt.Sprintf("%s (%v)", e.Name(), err))
			continue
		}
		info, err := l.Info()
		l.Close()
		switch {
		case err != nil:
			broken = append(broken, fmt.Sprintf("%s (%v)", e.Name(), err))
		case info.Cgroup() == nil:
			attached = append(attached, e.Name()) // not a cgroup link (LSM): nothing to compare
		case info.Cgroup().CgroupId != want:
			elsewhere = append(elsewhere, fmt.Sprintf("%s (cgroup id %d)", e.Name(), info.Cgroup().CgroupId))
		default:
			attached = append(attached, e.Name())
		}
	}
	switch {
	case len(broken) > 0:
		return fail(name, "restart the sidecar: it re-pins what it cannot read", "unreadable links: %s", strings.Join(broken, ", "))
	case len(elsewhere) > 0:
		return fail(name, "restart the sidecar with this config: it moves the links to the configured cgroup",
			"attached to another cgroup than %s (id %d): %s", parent, want, strings.Join(elsewhere, ", "))
	case len(attached) == 0:
		return fail(name, "start the sidecar", "no program attached to %s", parent)
	}
	return ok(name, "%d programs attached to %s", len(attached), parent)
}

// listeners checks that something listens on every address the sidecar serves, and says who.
// It reads the kernel's socket tables rather than connecting: a connection would be a flow the
// sidecar judges and records.
func listeners(s *daemon.Config) Check {
	const name = "sidecar.listeners"
	type want struct {
		addr netip.AddrPort
		udp  bool
		what string
	}
	var wants []want
	loopbacks := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	if s.Transparent.IPv6 {
		loopbacks = append(loopbacks, netip.IPv6Loopback())
	}
	if s.Transparent.Enabled {
		for _, a := range loopbacks {
			wants = append(wants, want{netip.AddrPortFrom(a, s.Transparent.Port), false, "transparent"})
			if s.Transparent.DNSPort != 0 {
				wants = append(wants, want{netip.AddrPortFrom(a, s.Transparent.DNSPort), true, "dns/udp"},
					want{netip.AddrPortFrom(a, s.Transparent.DNSPort), false, "dns/tcp"})
			}
		}
	}
	if s.Interceptor.ListenAddr != "" {
		ap, err := netip.ParseAddrPort(s.Interceptor.ListenAddr)
		if err != nil {
			return fail(name, "fix [sidecar.interceptor] listen_addr", "%v", err)
		}
		wants = append(wants, want{ap, false, "explicit proxy"})
	}
	if len(wants) == 0 {
		return ok(name, "nothing to listen on")
	}
	tables := map[bool][]socketEntry{}
	for _, udp := range []bool{false, true} {
		for _, f := range map[bool][]string{false: {"/proc/net/tcp", "/proc/net/tcp6"}, true: {"/proc/net/udp", "/proc/net/udp6"}}[udp] {
			file, err := os.Open(f)
			if err != nil {
				continue // no IPv6 in this kernel
			}
			entries, err := parseProcNet(file)
			file.Close()
			if err != nil {
				return fail(name, "", "%s: %v", f, err)
			}
			tables[udp] = append(tables[udp], entries...)
		}
	}
	owners := socketOwners()
	var missing, found []string
	for _, w := range wants {
		var hit *socketEntry
		for i, e := range tables[w.udp] {
			state := uint8(tcpListen)
			if w.udp {
				state = udpClose
			}
			if e.State == state && e.Local == w.addr {
				hit = &tables[w.udp][i]
				break
			}
		}
		if hit == nil {
			missing = append(missing, fmt.Sprintf("%s %s", w.what, w.addr))
			continue
		}
		found = append(found, fmt.Sprintf("%s %s%s", w.what, w.addr, owners.describe(hit.Inode)))
	}
	if len(missing) > 0 {
		return fail(name, "start the sidecar; while nothing listens, agents' connections are refused (never let through)",
			"nothing listens on %s", strings.Join(missing, ", "))
	}
	return ok(name, "%s", strings.Join(found, "; "))
}

// owners maps socket inodes to the processes that hold them.
type owners map[uint64]string

func (o owners) describe(inode uint64) string {
	if who, found := o[inode]; found {
		return " (" + who + ")"
	}
	return ""
}

// socketOwners scans /proc/*/fd for sockets. Processes it cannot read are skipped.
func socketOwners() owners {
	out := owners{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err == nil {
				out[inode] = fmt.Sprintf("pid %d %s", pid, strings.TrimSpace(string(comm)))
			}
		}
	}
	return out
}
