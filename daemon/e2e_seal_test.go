//go:build linux

package daemon_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfirma/firma/daemon/audit"
	"github.com/openfirma/firma/internal/e2e"
	"github.com/openfirma/firma/internal/testutil"
)

// The seal, end to end: the real sidecar and its agents run inside a network namespace of the
// test's own, whose only link leads to a second namespace that plays the outside (listeners on
// both its addresses, a capture on its end of the link). The attacker, internal/e2e/cmd/escape,
// tries every way out it knows from inside the enforced cgroup, as root and as uid 65534. Nothing
// may reach the outside, and every refusal — the kernel's or the sidecar's own — must be in the
// audit log under the attacker's pid.

const (
	sealOutsidePort = 9443 // where the outside listens for anything that escapes
	sealMarkerPort  = 9    // the capture's sync datagrams
)

// sealLab is a NetLab with the real sidecar inside and a sentry outside.
type sealLab struct {
	*testutil.NetLab
	*e2e.Sidecar
	sentry *testutil.Sentry
	// lsm: the sidecar says the BPF LSM protections are in force (socket families, compat
	// setsockopt, bpf(), tun/tap).
	lsm bool
}

func newSealLab(t *testing.T, opts e2e.SidecarOptions) *sealLab {
	t.Helper()
	testutil.RequireRoot(t)
	lab := testutil.NewNetLab(t)
	// Let ping sockets past the kernel's own group check and let the kernel pick the sidecar's port
	// for bind(…, 0), so that firma is what refuses both.
	lab.Inside.Sysctl(t, "net.ipv4.ping_group_range", "0 2147483647")
	lab.Inside.Sysctl(t, "net.ipv4.ip_local_port_range", "10000 60999")
	opts.NetNS = lab.Inside
	// Every refusal reported and recorded: the rate limits have tests of their own.
	opts.TransparentTOML += "refusal_rate = 100000\nrefusal_burst = 100000\n"
	opts.AuditTOML += "\nrefusal_rate = 100000.0\nrefusal_burst = 100000\n"
	l := &sealLab{NetLab: lab}
	l.Sidecar = e2e.NewSidecar(t, opts)
	l.sentry = lab.Watch(t, []uint16{sealOutsidePort}, []uint16{sealOutsidePort, 53}, sealMarkerPort)
	l.lsm = strings.Contains(l.Logs(), "non-inet socket families refused")
	return l
}

// escapeArgs are the attacker's arguments in this lab, -more included: as uid unless it is negative.
func (l *sealLab) escapeArgs(uid int, extra ...string) []string {
	args := []string{
		"-more",
		"-target4", l.Outside4.String(), "-target6", l.Outside6.String(),
		"-src4", l.Inside4.String(), "-src6", l.Inside6.String(),
		"-port", fmt.Sprint(sealOutsidePort), "-ifname", l.InsideIf,
		"-sidecar-port", fmt.Sprint(l.Port), "-dns-port", fmt.Sprint(l.DNSPort),
		"-proxy-port", fmt.Sprint(l.ProxyPort), "-sidecar-pid", fmt.Sprint(l.PID()), "-control", l.ControlSocket,
		fmt.Sprintf("-raw-frames=%v", l.lsm), // without BPF LSM a root agent's frame would leave
	}
	if uid >= 0 {
		args = append(args, "-uid", fmt.Sprint(uid))
	}
	return append(args, extra...)
}

// evidence is one audit record a technique must leave: a kernel refusal whose reason starts with
// "kernel refused <kind>: " (or "sandbox refused <kind>: " for firma run's seccomp filter) and
// ends with suffix, or a sidecar DENY in mode naming host.
type evidence struct {
	mode   string // "kernel", or the sidecar's transport mode
	by     string // kernel: "kernel" or "sandbox"
	kind   string // kernel: the refusal kind
	suffix string // kernel: how the reason ends
	host   string // sidecar: the record's resource host
}

func kernel(kind, suffix string) evidence {
	return evidence{mode: "kernel", by: "kernel", kind: kind, suffix: suffix}
}

// sandboxed is a refusal of firma run's seccomp filter, which firma run reports to the sidecar.
func sandboxed(kind, suffix string) evidence {
	return evidence{mode: "kernel", by: "sandbox", kind: kind, suffix: suffix}
}
func sidecar(mode, host string) evidence { return evidence{mode: mode, host: host} }

func (e evidence) String() string {
	if e.mode == "kernel" {
		return fmt.Sprintf("%s refused %s: …%s", e.by, e.kind, e.suffix)
	}
	return fmt.Sprintf("sidecar DENY %s %s", e.mode, e.host)
}

func (e evidence) match(ev audit.Event) bool {
	env := ev.Envelope
	if ev.Kind != audit.KindDecision || env == nil || ev.Decision == nil || ev.Decision.Outcome != "DENY" || env.Transport.Mode != e.mode {
		return false
	}
	if e.mode == "kernel" {
		return strings.HasPrefix(ev.Decision.Reason, e.by+" refused "+e.kind+": ") && strings.HasSuffix(ev.Decision.Reason, e.suffix)
	}
	return env.Intent.Resource.Host == e.host
}

// sealWant is what one technique must come to in the audit log.
type sealWant struct {
	records []evidence
	// refused: the attacker must see an error, whether or not a record says why (the sandbox's
	// seccomp filter, its PID namespace and mounts refuse without one).
	refused bool
	// kernelDecides: the kernel refuses or allows it on its own (a protocol it lacks, a link-local
	// scope); nothing is asserted but the seal.
	kernelDecides bool
}

// sealExpectations says, for every technique the attacker runs, which records it must leave.
// Nothing here says which syscall fails with which errno: bpf/seal_test.go holds the kernel to
// that. This is the sidecar's half: every refusal in the audit log, under the attacker's pid.
func sealExpectations(l *sealLab, root bool) map[string]sealWant {
	out4 := fmt.Sprintf("%s:%d", l.Outside4, sealOutsidePort)
	out6 := fmt.Sprintf("[%s]:%d", l.Outside6, sealOutsidePort)
	rec := func(e ...evidence) sealWant { return sealWant{records: e} }
	tcp4, dns := rec(sidecar("tcp", out4)), rec(sidecar("dns", "example.test"))
	sockopt := func(name string) sealWant { return rec(kernel("sockopt", " "+name)) }
	egress, udp4 := rec(kernel("egress drop", "")), rec(kernel("udp", "to "+out4))
	bind := func(port uint16) sealWant { return rec(kernel("bind", fmt.Sprintf(":%d", port))) }
	w := map[string]sealWant{
		// Redirected to the sidecar, which judges and refuses them (nothing permits the outside).
		"connect4": tcp4, "connect_mapped": tcp4, "tfo_to_sidecar": tcp4, "io_uring_connect": tcp4,
		"connect6":                 rec(sidecar("tcp", out6)),
		"dns_udp":                  dns,
		"ipv6_pktinfo_sticky_zero": dns,
		"msg_dontroute_dns":        dns,
		"dns_tcp_query":            dns,
		"dns_udp_garbage":          rec(sidecar("dns", "(malformed)")),
		"dns_tcp_garbage":          rec(sidecar("dns", "(malformed)")),
		"http_to_outside":          rec(sidecar("http", l.Outside4.String())),
		"tls_to_outside":           rec(sidecar("connect", fmt.Sprintf("outside.test:%d", sealOutsidePort))),
		"proxy_connect_outside":    tcp4,

		// Refused in the kernel, each with its record.
		"sidecar_direct":                 rec(kernel("self", "")),
		"udp_other_port":                 udp4,
		"udp_connect_other_port":         rec(kernel("udp", "to "+out6)),
		"io_uring_sendmsg_udp":           udp4,
		"udp_connected_dns_sendto_other": udp4,
		"udp_mapped_other_port":          udp4,
		"udp_broadcast_other":            rec(kernel("udp", fmt.Sprintf("to 255.255.255.255:%d", sealOutsidePort))),
		"sendmmsg_dns_then_other":        rec(sidecar("dns", "example.test"), kernel("udp", "to "+out4)),
		"ping_socket":                    rec(kernel("proto", "protocol 1")),
		"mptcp":                          rec(kernel("proto", "protocol 262")),
		"udplite":                        rec(kernel("proto", "protocol 136")),
		"bind_sidecar_any":               bind(l.Port),
		"bind_sidecar_link_reuseport":    bind(l.Port),
		"bind_sidecar6":                  bind(l.Port),
		"bind_ephemeral_is_sidecar":      bind(l.Port),
		"io_uring_bind_sidecar":          bind(l.Port),
		"bind_dns_reuseport":             bind(l.DNSPort),
		"ip_pktinfo_cmsg":                egress,
		"ipv6_pktinfo_cmsg":              egress,
		"mapped_pktinfo_cmsg":            egress,
		"ip_options_rr_cmsg":             egress,

		// The kernel refuses these itself, before firma's programs run.
		"ipv6_rthdr_cmsg":    {},
		"sctp":               {kernelDecides: true},
		"connect6_linklocal": {kernelDecides: true},
		// Refused by the control socket's peer check or by plain permissions: logged, not audited.
		"control_socket": {},
		// A namespace of its own has no sidecar and no link: refused (EPERM without privilege, else
		// ENETUNREACH), nothing to record.
		"netns_unshare_connect": {refused: true},
	}
	for name, opt := range map[string]string{
		"so_bindtodevice_connect": "SO_BINDTODEVICE", "so_bindtodevice_tfo": "SO_BINDTODEVICE",
		"so_bindtoifindex_connect": "SO_BINDTOIFINDEX", "ip_unicast_if_connect": "IP_UNICAST_IF",
		"ip_unicast_if_dns": "IP_UNICAST_IF", "ipv6_unicast_if_connect": "IPV6_UNICAST_IF",
		"ipv6_rthdr_type0": "IPV6_RTHDR", "ipv6_rthdr_srh": "IPV6_RTHDR", "ipv6_dstopts": "IPV6_DSTOPTS",
		"ip_options_lsrr": "IP_OPTIONS", "ip_options_ssrr": "IP_OPTIONS", "so_mark": "SO_MARK",
		"so_dontroute": "SO_DONTROUTE", "ip_transparent": "IP_TRANSPARENT", "ip_freebind": "IP_FREEBIND",
		"ipv6_pktinfo_sticky": "IPV6_PKTINFO", "ipv6_2292pktoptions": "IPV6_2292PKTOPTIONS",
		"ip_xfrm_policy": "IP_XFRM_POLICY", "udp_encap": "UDP_ENCAP", "tcp_repair": "TCP_REPAIR",
		"io_uring_setsockopt_bindtodevice": "SO_BINDTODEVICE",
	} {
		w[name] = sockopt(opt)
	}

	// Needing CAP_NET_RAW: the kernel refuses uid 65534 itself.
	if root {
		w["raw_ip"] = rec(kernel("proto", "protocol 17"))
		w["ip_retopts_cmsg"], w["ipv6_dstopts_cmsg"] = egress, egress
	} else {
		w["raw_ip"], w["ip_retopts_cmsg"], w["ipv6_dstopts_cmsg"] = sealWant{}, sealWant{}, sealWant{}
	}

	// compat setsockopt (int 0x80, and io_uring rings set up through it) skips cgroup/setsockopt:
	// the BPF LSM refuses it, else the packet backstop drops what it would route.
	compat := map[string]string{
		"compat_ip_unicast_if_connect": "IP_UNICAST_IF", "compat_ip_unicast_if_dns": "IP_UNICAST_IF",
		"compat_ipv6_rthdr_srh": "IPV6_RTHDR", "compat_ip_options_lsrr": "IP_OPTIONS",
		"compat_so_bindtodevice_tfo": "SO_BINDTODEVICE", "io_uring_compat_setsockopt_unicast_if_dns": "IP_UNICAST_IF",
	}
	for name, opt := range compat {
		switch {
		case l.lsm:
			w[name] = sockopt(opt)
		case name == "compat_ip_unicast_if_connect":
			w[name] = sealWant{} // IP_UNICAST_IF does not route TCP: it reaches the sidecar, says nothing, closes
		case name == "compat_ip_options_lsrr" && !root:
			w[name] = sealWant{} // IP_OPTIONS needs CAP_NET_RAW
		default:
			w[name] = egress
		}
	}

	// Other socket families, bpf() and tun/tap: the BPF LSM's. Without it only what the kernel
	// refuses on its own is refused, and firma records nothing.
	for name, kind := range map[string]string{
		"af_packet": "family", "af_netlink": "family", "af_vsock": "family", "af_xdp": "family", "af_alg": "family",
		"bpf_syscall": "bpf", "tun": "tun",
	} {
		switch {
		case l.lsm && (root || kind == "family"):
			w[name] = rec(kernel(kind, ""))
		case l.lsm:
			w[name] = sealWant{kernelDecides: true} // without CAP_NET_ADMIN or CAP_BPF the kernel may refuse first
		default:
			w[name] = sealWant{kernelDecides: true}
		}
	}

	// The sidecar's own process and cgroupfs: out of an unprivileged agent's reach. (A root agent in
	// plain placement can reach both; firma run's PID namespace and read-only cgroupfs close them.)
	if !root {
		w["signal_sidecar"], w["pidfd_getfd_sidecar"], w["cgroup_leave"] = sealWant{}, sealWant{}, sealWant{}
	}
	return w
}

// plainPlacementRootHoles are the techniques a root agent in plain placement is known to get
// through: it shares the sidecar's PID namespace and can write cgroup.procs. The test does not run
// them as root in plain placement; `firma run` closes them.
var plainPlacementRootHoles = []string{"signal_sidecar", "pidfd_getfd_sidecar", "cgroup_leave"}

// firmaRunExpectations are an unprivileged agent's (firma run drops every capability, root's
// included), with what the sandbox refuses before the kernel's hooks could: its seccomp filter
// (io_uring, other socket families, bpf(), the i386 entry), its private /dev, its PID namespace and
// its mounts (the sidecar's process, the control socket and cgroupfs are out of sight or
// read-only). The attacker must see each refused; what the seccomp filter refuses (a socket family,
// io_uring, bpf()) firma run reports, and the sidecar records it under the attacker's pid.
func firmaRunExpectations(l *sealLab) map[string]sealWant {
	w := sealExpectations(l, false)
	sandbox := sealWant{refused: true}
	seccomp := func(kind, suffix string) sealWant {
		return sealWant{refused: true, records: []evidence{sandboxed(kind, suffix)}}
	}
	for name := range w {
		switch {
		case strings.HasPrefix(name, "io_uring_compat_"):
			w[name] = sandbox // set up through the i386 entry: ENOSYS, nothing to report
		case strings.HasPrefix(name, "io_uring_"):
			w[name] = seccomp("syscall", "io_uring_setup")
		case name == "af_netlink":
			w[name] = sandbox // NETLINK_ROUTE: glibc tries it on name lookups, refused unrecorded
		case strings.HasPrefix(name, "af_"):
			w[name] = seccomp("family", "")
		case strings.HasPrefix(name, "compat_"):
			w[name] = sandbox // the i386 entry: ENOSYS for every call, nothing to report
		}
	}
	w["bpf_syscall"] = seccomp("syscall", "bpf")
	for _, name := range []string{"tun", "control_socket", "raw_ip", "ip_retopts_cmsg", "ipv6_dstopts_cmsg"} {
		w[name] = sandbox
	}
	for _, name := range plainPlacementRootHoles {
		w[name] = sandbox
	}
	return w
}

// TestSealRealSidecar runs the attacker against the real sidecar, as root and as uid 65534: in
// plain placement (the test puts the process in the agent cgroup) and under `firma run` (its own
// cgroup, registered by firma run, inside the sandbox).
func TestSealRealSidecar(t *testing.T) {
	l := newSealLab(t, e2e.SidecarOptions{})
	t.Logf("BPF LSM protections in force: %v", l.lsm)
	for _, user := range []struct {
		name string
		uid  int
	}{{"root", 0}, {"nobody", 65534}} {
		t.Run("plain/"+user.name, func(t *testing.T) {
			var skip []string
			if user.uid == 0 {
				skip = plainPlacementRootHoles
			}
			cmd := l.Command(t.Context(), t, l.Agent, e2e.EscapeBinary(t), l.escapeArgs(user.uid, "-skip", strings.Join(skip, ","))...)
			got, pid := e2e.RunEscape(t, cmd)
			l.checkSeal(t, got, pid, pid, user.uid, sealExpectations(l, user.uid == 0))
		})
		t.Run("firma-run/"+user.name, func(t *testing.T) {
			var flags []string
			if user.uid != 0 {
				flags = []string{"--user", fmt.Sprint(user.uid)}
			}
			cmd := l.FirmaRun(t.Context(), t, flags, e2e.EscapeBinary(t), l.escapeArgs(-1, "-hold")...)
			got, nsPID, pid := e2e.RunEscapeHeld(t, cmd, func() error { return l.StartCommand(cmd) }, l.Parent.Rel)
			l.checkSeal(t, got, nsPID, pid, user.uid, firmaRunExpectations(l))
		})
	}

	// A server the agent runs is out of the outside's reach: its SYNs are dropped on the way in,
	// each drop recorded under the server's pid.
	t.Run("plain/inbound", func(t *testing.T) {
		cmd := l.Command(t.Context(), t, l.Agent, e2e.EscapeBinary(t), "-uid", "65534", "-listen", fmt.Sprint(sealInboundPort))
		l.checkInbound(t, cmd, cmd.Start, func(pid int) int { return pid })
	})
	t.Run("firma-run/inbound", func(t *testing.T) {
		cmd := l.FirmaRun(t.Context(), t, []string{"--user", "65534"}, e2e.EscapeBinary(t), "-listen", fmt.Sprint(sealInboundPort))
		l.checkInbound(t, cmd, func() error { return l.StartCommand(cmd) }, func(nsPID int) int {
			return e2e.HostPID(t, "escape", nsPID, l.Parent.Rel)
		})
	})
}

// sealInboundPort is where the agent's server listens in the inbound tests.
const sealInboundPort = 8080

// checkInbound starts the attacker's server (cmd, with -listen), dials it from the outside over
// IPv4 and IPv6, and checks that neither dial got through, that the server accepted nothing, that
// the kernel's drops are in the audit log under the server's pid (hostPID maps the pid it prints
// to the kernel's), and that nothing left.
func (l *sealLab) checkInbound(t *testing.T, cmd *exec.Cmd, start func() error, hostPID func(int) int) {
	t.Helper()
	srv := testutil.StartPiped(t, cmd, start)
	var ready struct {
		Ready bool
		PID   int
	}
	if line := srv.Line(); json.Unmarshal([]byte(line), &ready) != nil || !ready.Ready {
		t.Fatalf("server did not start: %q %s", line, srv.Stderr.String())
	}
	pid := hostPID(ready.PID)
	for _, to := range []netip.Addr{l.Inside4, l.Inside6} {
		if err := l.Outside.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(to, sealInboundPort).String(), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}); err == nil {
			t.Errorf("the outside reached the agent's server on %s", to)
		}
	}
	srv.Stdin.Close()
	var res e2e.Attempt
	if line := srv.Line(); json.Unmarshal([]byte(line), &res) != nil {
		t.Fatalf("server result: %q", line)
	}
	cmd.Wait()
	if res.Accepted != 0 || res.Failed != "" {
		t.Errorf("server: %s, accepted %d", res, res.Accepted)
	}
	for _, from := range []netip.Addr{l.Outside4, l.Outside6} {
		l.WaitEvent(t, fmt.Sprintf("the ingress drop from %s under pid %d", from, pid), func(ev audit.Event) bool {
			if !kernel("ingress drop", "").match(ev) {
				return false
			}
			host := ev.Envelope.Intent.Resource.Host
			return ev.Envelope.Agent.PID == pid &&
				strings.Contains(ev.Decision.Reason, fmt.Sprintf("to port %d from ", sealInboundPort)) &&
				(strings.HasPrefix(host, from.String()+":") || strings.HasPrefix(host, "["+from.String()+"]:"))
		})
	}
	l.sentry.AssertSealed(t)
}

// checkSeal compares the attacker's lines with the expectations, waits for every record they call
// for, and checks that nothing reached the outside.
// linePID is the attacker's pid as it sees it, pid as the kernel (and the audit log) knows it.
func (l *sealLab) checkSeal(t *testing.T, got map[string]e2e.Attempt, linePID, pid, uid int, want map[string]sealWant) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(got)) {
		a := got[name]
		w, ok := want[name]
		switch {
		case !ok:
			t.Errorf("technique %s has no expectation: %s", name, a)
		case a.PID != linePID || a.UID != uid:
			t.Errorf("%s: ran as pid %d uid %d, want %d %d", name, a.PID, a.UID, linePID, uid)
		case (w.refused || len(w.records) > 0 && w.records[0].mode == "kernel") && a.Failed == "":
			t.Errorf("%s: must be refused, but the attacker saw no error: %s", name, a)
		}
		t.Logf("%s", a)
	}
	for name := range want {
		if _, ok := got[name]; !ok {
			t.Errorf("%s: not run", name)
		}
	}

	// Every record, as many of each as techniques call for.
	need := map[evidence][]string{}
	for name, w := range want {
		for _, e := range w.records {
			need[e] = append(need[e], name)
		}
	}
	var missing []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		missing = missing[:0]
		var mine []audit.Event
		for _, ev := range l.Events(t) {
			if ev.Envelope != nil && ev.Envelope.Agent.PID == pid {
				mine = append(mine, ev)
			}
		}
		for e, names := range need {
			n := 0
			for _, ev := range mine {
				if e.match(ev) {
					n++
				}
			}
			if n < len(names) {
				missing = append(missing, fmt.Sprintf("%s: %d of %d (for %s)", e, n, len(names), strings.Join(names, ", ")))
			}
		}
		if len(missing) == 0 {
			for _, ev := range mine {
				if ev.Kind == audit.KindDecision && ev.Decision.Outcome != "DENY" {
					t.Errorf("the attacker was allowed something: %+v %+v", ev.Envelope, ev.Decision)
				}
				if ev.Envelope.Agent.AgentID != e2e.AgentID || ev.Envelope.Agent.UID != uid {
					t.Errorf("record names agent %q uid %d, want %s %d: %+v", ev.Envelope.Agent.AgentID, ev.Envelope.Agent.UID, e2e.AgentID, uid, ev.Decision)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			slices.Sort(missing)
			t.Errorf("audit records missing for pid %d:\n  %s", pid, strings.Join(missing, "\n  "))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.sentry.AssertSealed(t)
}

// TestFirmaRunRefusesAnImpostorSidecar: while no sidecar runs, another user binds the control
// socket's path in a sticky directory; firma run must refuse it without a word to it, and launch
// nothing.
func TestFirmaRunRefusesAnImpostorSidecar(t *testing.T) {
	testutil.RequireRoot(t)
	dir := testutil.StickyDir(t)
	sock := filepath.Join(dir, "control.sock")
	imp := testutil.StartPiped(t, exec.Command(e2e.EscapeBinary(t), "-uid", "65534", "-impostor", sock), nil)
	if l := imp.Line(); l != "listening" {
		t.Fatalf("impostor: %q %s", l, imp.Stderr.String())
	}

	marker := filepath.Join(dir, "ran")
	run := exec.Command(e2e.Binary(t, "firma"), "run", "--sidecar", sock, "--", "touch", marker)
	run.Env = testutil.CleanEnv()
	got, err := run.CombinedOutput()
	if exitCode(err) == 0 || !strings.Contains(string(got), "not firma's sidecar") || !strings.Contains(string(got), "uid 65534") {
		t.Fatalf("firma run against an impostor: exit %d: %s", exitCode(err), got)
	}
	t.Logf("firma run: %s", got)
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("firma run launched the agent (%v)", err)
	}
	imp.Cmd.Process.Kill()
	for l := imp.Line(); l != ""; l = imp.Line() {
		t.Errorf("the impostor was spoken to: %s", l)
	}
}
