//go:build linux

package doctor

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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

// programs asks the bpf package whether every program is pinned, attached to the configured
// cgroup and of this firma build (bpf.Inspect), and reports which optional protections (BPF LSM)
// are missing.
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
	st := bpf.Inspect(bpf.Config{Cgroup: parent, PinDir: s.Transparent.PinDir})
	if err := st.Err(); err != nil {
		return fail(name, "start (or restart) the sidecar with this config: it attaches, re-pins and repairs its programs", "%v", err)
	}
	// What BPF LSM would add is the bpf_lsm check's to report.
	return ok(name, "%d programs attached to %s; %s", len(st.Links), parent, st.Features)
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
