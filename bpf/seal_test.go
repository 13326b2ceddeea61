//go:build linux

package bpf_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/openfirma/firma/bpf"
)

// outcome is what one escape technique must come to.
type outcome struct {
	// failed is the syscall that must fail, "" when every one must succeed, and "*" when the
	// kernel itself decides (firma then must not report anything).
	failed string
	errnos []string // the errnos accepted for failed
	// report is the refusal the kernel must report for it, 0 for none.
	report bpf.RefusalKind
	// sock identifies a socket() refusal's report (family, type, protocol): it has no cookie.
	sock [3]int
	// answer is what the stand-in sidecar must have answered (a redirected connection).
	answer string
	// peer is what getpeername must say: the original destination, not the sidecar.
	peer string
}

func refused(op string, kind bpf.RefusalKind) outcome {
	return outcome{failed: op, errnos: []string{"EPERM"}, report: kind}
}

// kernelRefuses is a refusal the kernel makes on its own before firma's programs run (for want of
// a capability): EPERM and no report.
func kernelRefuses(op string, errnos ...string) outcome {
	if len(errnos) == 0 {
		errnos = []string{"EPERM"}
	}
	return outcome{failed: op, errnos: errnos}
}

func socketRefused(kind bpf.RefusalKind, family, typ, proto int) outcome {
	return outcome{failed: "socket", errnos: []string{"EPERM"}, report: kind, sock: [3]int{family, typ, proto}}
}

// expectations says what every technique of the escape program must come to for root or uid
// 65534, on a kernel with the features f.
func expectations(l *lab, root bool, f bpf.Features) map[string]outcome {
	out4 := fmt.Sprintf("stand-in %s:%d", l.Outside4, labOutsidePort)
	out6 := fmt.Sprintf("stand-in [%s]:%d", l.Outside6, labOutsidePort)
	e := map[string]outcome{
		// What must keep working.
		"connect4":                 {answer: out4, peer: fmt.Sprintf("%s:%d", l.Outside4, labOutsidePort)},
		"connect6":                 {answer: out6, peer: fmt.Sprintf("[%s]:%d", l.Outside6, labOutsidePort)},
		"connect_mapped":           {answer: out4, peer: fmt.Sprintf("[::ffff:%s]:%d", l.Outside4, labOutsidePort)},
		"tfo_to_sidecar":           {answer: out4},
		"dns_udp":                  {answer: fmt.Sprintf("%s:53", l.Outside4)}, // recvfrom shows the server asked
		"ipv6_pktinfo_sticky_zero": {},
		"msg_dontroute_dns":        {},

		"sidecar_direct":         refused("connect", bpf.RefusalSelf),
		"udp_other_port":         refused("sendto", bpf.RefusalUDP),
		"udp_connect_other_port": refused("connect", bpf.RefusalUDP),
		"ping_socket":            socketRefused(bpf.RefusalProto, unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP),
		"mptcp":                  socketRefused(bpf.RefusalProto, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP),

		"bind_sidecar_any":            refused("bind", bpf.RefusalBind),
		"bind_sidecar_link_reuseport": refused("bind", bpf.RefusalBind),
		"bind_sidecar6":               refused("bind", bpf.RefusalBind),
		"bind_dns_reuseport":          refused("bind", bpf.RefusalBind),
		"bind_ephemeral_is_sidecar":   refused("bind", bpf.RefusalBind),

		// Per-message tricks the packet backstop drops (sendmsg then fails with EPERM).
		"ip_pktinfo_cmsg":     refused("sendmsg", bpf.RefusalEgress),
		"ipv6_pktinfo_cmsg":   refused("sendmsg", bpf.RefusalEgress),
		"mapped_pktinfo_cmsg": refused("sendmsg", bpf.RefusalEgress),
		"ip_options_rr_cmsg":  refused("sendmsg", bpf.RefusalEgress),
		// The kernel takes per-message routing headers of type 2 only, and only with Mobile IPv6.
		"ipv6_rthdr_cmsg": kernelRefuses("sendmsg", "EINVAL"),
	}
	for name, opt := range map[string]string{
		"so_bindtodevice_connect":  "SO_BINDTODEVICE",
		"so_bindtodevice_tfo":      "SO_BINDTODEVICE",
		"so_bindtoifindex_connect": "SO_BINDTOIFINDEX",
		"ip_unicast_if_connect":    "IP_UNICAST_IF",
		"ip_unicast_if_dns":        "IP_UNICAST_IF",
		"ipv6_unicast_if_connect":  "IPV6_UNICAST_IF",
		"ipv6_rthdr_type0":         "IPV6_RTHDR",
		"ipv6_rthdr_srh":           "IPV6_RTHDR",
		"ipv6_dstopts":             "IPV6_DSTOPTS",
		"ip_options_lsrr":          "IP_OPTIONS",
		"ip_options_ssrr":          "IP_OPTIONS",
		"so_mark":                  "SO_MARK",
		"so_dontroute":             "SO_DONTROUTE",
		"ip_transparent":           "IP_TRANSPARENT",
		"ip_freebind":              "IP_FREEBIND",
		"ipv6_pktinfo_sticky":      "IPV6_PKTINFO",
		"ipv6_2292pktoptions":      "IPV6_2292PKTOPTIONS",
		"ip_xfrm_policy":           "IP_XFRM_POLICY",
		"udp_encap":                "UDP_ENCAP",
		"tcp_repair":               "TCP_REPAIR",
	} {
		e[name] = refused("setsockopt "+opt, bpf.RefusalSockopt)
	}

	// Needing CAP_NET_RAW, refused by the kernel itself to uid 65534.
	if root {
		e["raw_ip"] = socketRefused(bpf.RefusalProto, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
		e["ip_retopts_cmsg"] = refused("sendmsg", bpf.RefusalEgress)
		e["ipv6_dstopts_cmsg"] = refused("sendmsg", bpf.RefusalEgress)
	} else {
		e["raw_ip"] = kernelRefuses("socket")
		e["ip_retopts_cmsg"] = kernelRefuses("sendmsg")
		e["ipv6_dstopts_cmsg"] = kernelRefuses("sendmsg")
	}

	// compat setsockopt skips cgroup/setsockopt; the BPF LSM refuses it, else the backstop drops
	// what it would route.
	if f.CompatSockopt {
		for name, opt := range map[string]string{
			"compat_ip_unicast_if_connect": "IP_UNICAST_IF", "compat_ip_unicast_if_dns": "IP_UNICAST_IF",
			"compat_ipv6_rthdr_srh": "IPV6_RTHDR", "compat_ip_options_lsrr": "IP_OPTIONS",
			"compat_so_bindtodevice_tfo": "SO_BINDTODEVICE",
		} {
			e[name] = refused("compat setsockopt "+opt, bpf.RefusalSockopt)
		}
	} else {
		e["compat_ip_unicast_if_connect"] = outcome{} // IP_UNICAST_IF does not route TCP: it reaches the sidecar
		e["compat_ip_unicast_if_dns"] = refused("sendto", bpf.RefusalEgress)
		e["compat_ipv6_rthdr_srh"] = refused("sendto", bpf.RefusalEgress)
		e["compat_so_bindtodevice_tfo"] = outcome{failed: "sendto MSG_FASTOPEN", errnos: []string{"TIMEOUT"}, report: bpf.RefusalEgress}
		if root {
			e["compat_ip_options_lsrr"] = outcome{failed: "connect", errnos: []string{"TIMEOUT"}, report: bpf.RefusalEgress}
		} else {
			e["compat_ip_options_lsrr"] = kernelRefuses("compat setsockopt IP_OPTIONS")
		}
	}

	// Other socket families, bpf() and tun/tap: the BPF LSM's. Without it, only what the kernel
	// refuses on its own is refused (the holes Features reports).
	families := map[string][3]int{
		"af_packet":  {unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))},
		"af_netlink": {unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE},
		"af_vsock":   {unix.AF_VSOCK, unix.SOCK_STREAM, 0},
		"af_xdp":     {unix.AF_XDP, unix.SOCK_RAW, 0},
		"af_alg":     {unix.AF_ALG, unix.SOCK_SEQPACKET, 0},
	}
	for name, s := range families {
		switch {
		case f.SocketFamilies:
			e[name] = socketRefused(bpf.RefusalFamily, s[0], s[1], s[2])
		case name == "af_alg":
			e[name] = outcome{failed: "*"} // kernels without the crypto user API: EAFNOSUPPORT
		case !root && (name == "af_packet" || name == "af_xdp"):
			e[name] = kernelRefuses("socket")
		default:
			e[name] = outcome{}
		}
	}
	switch {
	case f.BPFSyscall:
		e["bpf_syscall"] = refused("bpf BPF_PROG_GET_NEXT_ID", bpf.RefusalBPF)
	case root:
		e["bpf_syscall"] = outcome{}
	default:
		e["bpf_syscall"] = kernelRefuses("bpf BPF_PROG_GET_NEXT_ID")
	}
	switch {
	case f.TunDevices:
		e["tun"] = refused("ioctl TUNSETIFF", bpf.RefusalTun)
	case root:
		e["tun"] = outcome{}
	default:
		e["tun"] = outcome{failed: "*"} // no CAP_NET_ADMIN (or no access to /dev/net/tun)
	}
	return e
}

// TestSealEscape runs every escape technique from inside an enforced cgroup, as root and as uid
// 65534, and checks each against what it must come to: the syscall that fails and its errno, the
// refusal the kernel reports for it (with the attacker's pid, comm, uid, cgroup and socket), the
// stand-in sidecar's view of what was redirected — and that nothing reached the outside.
func TestSealEscape(t *testing.T) {
	t.Parallel()
	l := newLab(t, nil)
	f := l.progs.Features()
	t.Logf("BPF LSM protections: %v", f)
	for _, user := range []struct {
		name string
		uid  int
	}{{"root", 0}, {"nobody", 65534}} {
		t.Run(user.name, func(t *testing.T) {
			got, pid := l.runEscape(t, "-uid", fmt.Sprint(user.uid), fmt.Sprintf("-raw-frames=%v", f.SocketFamilies))
			want := expectations(l, user.uid == 0, f)
			for name := range got {
				if _, ok := want[name]; !ok {
					t.Errorf("technique %s has no expectation", name)
				}
			}
			for name, w := range want {
				a, ok := got[name]
				if !ok {
					t.Errorf("%s: not run", name)
					continue
				}
				if a.PID != pid || a.UID != user.uid {
					t.Errorf("%s: ran as pid %d uid %d, want %d %d", name, a.PID, a.UID, pid, user.uid)
				}
				l.checkAttempt(t, a, w)
			}
			if !f.Complete() {
				t.Logf("not refused without BPF LSM: %s", holes(got, want))
			}
			l.assertSealed(t)
		})
	}

	// Counters: every report was counted, none was suppressed or lost, and the kinds seen moved
	// their counters.
	counters, err := l.progs.Counters()
	if err != nil {
		t.Fatal(err)
	}
	reports, ok := l.refusals.awaitCount(int(counters["refusal_events"]))
	if !ok {
		t.Errorf("%d reports read, counter refusal_events = %d", len(reports), counters["refusal_events"])
	}
	if counters["refusal_events_suppressed"] != 0 || counters["refusal_events_lost"] != 0 {
		t.Errorf("reports suppressed or lost: %v", counters)
	}
	perKind := map[bpf.RefusalKind]uint64{}
	for _, r := range reports {
		perKind[r.Kind]++
	}
	for kind, counter := range map[bpf.RefusalKind]string{
		bpf.RefusalSelf: "refuse_self", bpf.RefusalUDP: "refuse_udp", bpf.RefusalProto: "refuse_proto",
		bpf.RefusalSockopt: "refuse_sockopt", bpf.RefusalBind: "refuse_bind", bpf.RefusalEgress: "drop_egress",
	} {
		if perKind[kind] == 0 || counters[counter] != perKind[kind] {
			t.Errorf("%s: %d reports, counter %s = %d", kind, perKind[kind], counter, counters[counter])
		}
	}
	for _, c := range []string{"redirect_tcp", "redirect_dns", "published"} {
		if counters[c] == 0 {
			t.Errorf("counter %s = 0 after redirected traffic", c)
		}
	}
}

// checkAttempt compares one technique's line with what it must come to, and finds its report.
func (l *lab) checkAttempt(t *testing.T, a attempt, w outcome) {
	t.Helper()
	switch {
	case w.failed == "*":
	case w.failed == "" && a.Failed != "":
		t.Errorf("%s: must get through, got %s", a.Technique, a)
	case w.failed != "" && (a.Failed != w.failed || !slices.Contains(w.errnos, a.Errno)):
		t.Errorf("%s: want %s → %v, got %s", a.Technique, w.failed, w.errnos, a)
	}
	if w.answer != "" && a.Note != w.answer {
		t.Errorf("%s: answer %q, want %q (%s)", a.Technique, a.Note, w.answer, a)
	}
	if w.peer != "" && a.Peer != w.peer {
		t.Errorf("%s: getpeername says %q, want the original %q", a.Technique, a.Peer, w.peer)
	}
	if strings.HasPrefix(w.answer, "stand-in") {
		l.checkRedirected(t, a)
	}
	if w.report == 0 {
		for _, r := range l.refusals.snapshot() {
			if slices.Contains(a.Cookies, r.Cookie) {
				t.Errorf("%s: reported although nothing of firma's refused it: %v", a.Technique, r)
			}
		}
		return
	}
	r, ok := l.refusals.await(func(r bpf.Refusal) bool {
		if r.Kind != w.report || r.PID != uint32(a.PID) {
			return false
		}
		if w.sock != ([3]int{}) {
			return [3]int{r.Family, r.Type, r.Protocol} == w.sock
		}
		return slices.Contains(a.Cookies, r.Cookie)
	})
	if !ok {
		t.Errorf("%s: no %s report (pid %d, cookies %v)", a.Technique, w.report, a.PID, a.Cookies)
		return
	}
	if r.Comm != "escape" || r.UID != uint32(a.UID) || r.GID != uint32(a.UID) || r.CgroupID != l.cg.ID {
		t.Errorf("%s: report names %q uid %d gid %d cgroup %d, want escape %d %d %d: %v",
			a.Technique, r.Comm, r.UID, r.GID, r.CgroupID, a.UID, a.UID, l.cg.ID, r)
	}
}

// checkRedirected finds the technique's connection at the stand-in sidecar, attributed to it.
func (l *lab) checkRedirected(t *testing.T, a attempt) {
	t.Helper()
	for _, fl := range l.sidecar.seen("hello " + a.Technique) {
		o := fl.Origin
		if fl.Err == nil && o.PID == uint32(a.PID) && o.Comm == "escape" && o.CgroupID == l.cg.ID && o.UID == uint32(a.UID) {
			return
		}
	}
	t.Errorf("%s: the stand-in sidecar has no record of it: %+v", a.Technique, l.sidecar.seen("hello "+a.Technique))
}

// holes lists the techniques that got through only because a BPF LSM protection is missing.
func holes(got map[string]attempt, want map[string]outcome) string {
	var out []string
	for _, name := range []string{"af_packet", "af_netlink", "af_vsock", "af_xdp", "af_alg", "bpf_syscall", "tun"} {
		if a := got[name]; a.Failed == "" && want[name].failed == "" {
			out = append(out, name)
		}
	}
	return strings.Join(out, ", ")
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
