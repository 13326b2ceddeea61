package bpf

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// RefusalKind is what the kernel refused. The values are redirect.c's enum refusal_kind (a test
// holds them equal to the generated constants).
type RefusalKind uint32

const (
	RefusalUnconfigured RefusalKind = iota + 1 // the programs run without a sidecar port
	RefusalSelf                                // dialing the sidecar's own ports directly
	RefusalUDP                                 // UDP other than DNS
	RefusalIPv6                                // native IPv6 while the sidecar has no [::1] listener
	RefusalProto                               // an inet socket that is not TCP or UDP (raw, ICMP…)
	RefusalStorage                             // no room for the socket's record
	RefusalFamily                              // a socket family other than inet, inet6, unix
	RefusalSockopt                             // a socket option that changes where packets go
	RefusalBind                                // binding one of the sidecar's ports
	RefusalEgress                              // an outgoing packet not routed to the sidecar
	RefusalIngress                             // an incoming packet not from the sidecar
	RefusalBPF                                 // the bpf() syscall
	RefusalTun                                 // creating or attaching a tun/tap device
)

var refusalKindNames = map[RefusalKind]string{
	RefusalUnconfigured: "unconfigured",
	RefusalSelf:         "self",
	RefusalUDP:          "udp",
	RefusalIPv6:         "ipv6",
	RefusalProto:        "proto",
	RefusalStorage:      "storage",
	RefusalFamily:       "family",
	RefusalSockopt:      "sockopt",
	RefusalBind:         "bind",
	RefusalEgress:       "egress drop",
	RefusalIngress:      "ingress drop",
	RefusalBPF:          "bpf",
	RefusalTun:          "tun",
}

// String is the kind's short name, as audit records carry it ("sockopt", "egress drop").
func (k RefusalKind) String() string {
	if n, ok := refusalKindNames[k]; ok {
		return n
	}
	return "kind " + strconv.Itoa(int(k))
}

// Refusal is one refusal reported by the kernel: who, and what exactly was refused. Which detail
// fields are set depends on Kind; the rest are zero.
type Refusal struct {
	Kind RefusalKind
	// Who. For packets (egress and ingress drops), the process that created the socket: the
	// kernel drops packets in softirq as often as in the sender's context. PID 0 and an empty
	// Comm mean a socket created before the programs were attached.
	PID, TID uint32
	UID, GID uint32
	Comm     string
	CgroupID uint64 // the process's cgroup; for packets, the socket's
	Cookie   uint64 // socket cookie, 0 where there was no socket yet

	// What.
	Family   int            // socket family (AF_*)
	Type     int            // socket type (SOCK_*)
	Protocol int            // socket protocol as asked for in socket()
	Level    int            // sockopt: the level (SOL_*)
	Option   int            // sockopt: the option name
	BPFCmd   int            // bpf: the bpf() command
	Ifindex  uint32         // packets: the device routed to (egress) or arrived on (ingress)
	Addr     netip.AddrPort // destination (connect, sendmsg, egress), source (ingress), local (bind)
	// LocalPort is a packet's port on the enforced socket's side.
	LocalPort uint16
	IPProto   int // packets: the IP protocol (for IPv6, the first next header)

	// Suppressed counts this cgroup's refusals that the rate limit kept from being reported since
	// its previous report.
	Suppressed uint64
}

// String is one line for logs: what was refused, then who.
func (r Refusal) String() string {
	s := fmt.Sprintf("refused %s: %s (pid %d comm %q uid %d cgroup %d)", r.Kind, r.Detail(), r.PID, r.Comm, r.UID, r.CgroupID)
	if r.Suppressed > 0 {
		s += fmt.Sprintf(", %d more suppressed before it", r.Suppressed)
	}
	return s
}

// Detail says what was refused, without who: "setsockopt SOL_SOCKET SO_BINDTODEVICE",
// "socket AF_PACKET SOCK_RAW", "udp 10.0.0.1:9 → ifindex 2".
func (r Refusal) Detail() string {
	switch r.Kind {
	case RefusalFamily, RefusalProto:
		if r.Addr.IsValid() { // proto refused at connect/sendmsg: the socket exists
			return fmt.Sprintf("%s %s to %s", familyName(r.Family), typeName(r.Type), r.Addr)
		}
		return fmt.Sprintf("socket %s %s protocol %d", familyName(r.Family), typeName(r.Type), r.Protocol)
	case RefusalSockopt:
		return "setsockopt " + sockoptName(r.Level, r.Option)
	case RefusalBPF:
		return "bpf " + bpfCmdName(r.BPFCmd)
	case RefusalTun:
		return "tun/tap device"
	case RefusalEgress:
		return fmt.Sprintf("%s from port %d to %s via ifindex %d", protoName(r.IPProto), r.LocalPort, r.Addr, r.Ifindex)
	case RefusalIngress:
		return fmt.Sprintf("%s to port %d from %s via ifindex %d", protoName(r.IPProto), r.LocalPort, r.Addr, r.Ifindex)
	case RefusalBind:
		return fmt.Sprintf("bind %s %s", typeName(r.Type), r.Addr)
	default:
		return fmt.Sprintf("%s %s to %s", familyName(r.Family), typeName(r.Type), r.Addr)
	}
}

var familyNames = map[int]string{
	1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25",
	10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET", 21: "AF_RDS", 24: "AF_PPPOX", 29: "AF_CAN",
	30: "AF_TIPC", 31: "AF_BLUETOOTH", 33: "AF_RXRPC", 36: "AF_IEEE802154", 38: "AF_ALG",
	40: "AF_VSOCK", 41: "AF_KCM", 42: "AF_QIPCRTR", 43: "AF_SMC", 44: "AF_XDP", 45: "AF_MCTP",
}

func familyName(f int) string {
	if n, ok := familyNames[f]; ok {
		return n
	}
	return "AF_" + strconv.Itoa(f)
}

var typeNames = map[int]string{1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 10: "SOCK_PACKET"}

func typeName(t int) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return "SOCK_" + strconv.Itoa(t)
}

var protoNames = map[int]string{1: "icmp", 6: "tcp", 17: "udp", 0: "ipv6-hop-by-hop", 43: "ipv6-route", 44: "ipv6-frag", 50: "esp", 58: "ipv6-icmp", 60: "ipv6-opts"}

func protoName(p int) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return "ip-proto-" + strconv.Itoa(p)
}

type sockopt struct{ level, option int }

var levelNames = map[int]string{0: "SOL_IP", 1: "SOL_SOCKET", 6: "SOL_TCP", 17: "SOL_UDP", 41: "SOL_IPV6"}

// sockoptNames names the options common.h refuses.
var sockoptNames = map[sockopt]string{
	{1, 5}: "SO_DONTROUTE", {1, 25}: "SO_BINDTODEVICE", {1, 36}: "SO_MARK", {1, 62}: "SO_BINDTOIFINDEX",
	{0, 4}: "IP_OPTIONS", {0, 7}: "IP_RETOPTS", {0, 15}: "IP_FREEBIND", {0, 16}: "IP_IPSEC_POLICY",
	{0, 17}: "IP_XFRM_POLICY", {0, 19}: "IP_TRANSPARENT", {0, 50}: "IP_UNICAST_IF",
	{41, 3}: "IPV6_2292HOPOPTS", {41, 4}: "IPV6_2292DSTOPTS", {41, 5}: "IPV6_2292RTHDR",
	{41, 6}: "IPV6_2292PKTOPTIONS", {41, 9}: "IPV6_NEXTHOP", {41, 34}: "IPV6_IPSEC_POLICY",
	{41, 35}: "IPV6_XFRM_POLICY", {41, 50}: "IPV6_PKTINFO", {41, 54}: "IPV6_HOPOPTS",
	{41, 55}: "IPV6_RTHDRDSTOPTS", {41, 57}: "IPV6_RTHDR", {41, 59}: "IPV6_DSTOPTS",
	{41, 75}: "IPV6_TRANSPARENT", {41, 76}: "IPV6_UNICAST_IF", {41, 78}: "IPV6_FREEBIND",
	{6, 19}: "TCP_REPAIR", {6, 20}: "TCP_REPAIR_QUEUE", {6, 21}: "TCP_QUEUE_SEQ",
	{6, 22}: "TCP_REPAIR_OPTIONS", {6, 29}: "TCP_REPAIR_WINDOW", {17, 100}: "UDP_ENCAP",
}

func sockoptName(level, option int) string {
	l, ok := levelNames[level]
	if !ok {
		l = "level " + strconv.Itoa(level)
	}
	o, ok := sockoptNames[sockopt{level, option}]
	if !ok {
		o = "option " + strconv.Itoa(option)
	}
	return l + " " + o
}

var bpfCmdNames = []string{
	"BPF_MAP_CREATE", "BPF_MAP_LOOKUP_ELEM", "BPF_MAP_UPDATE_ELEM", "BPF_MAP_DELETE_ELEM",
	"BPF_MAP_GET_NEXT_KEY", "BPF_PROG_LOAD", "BPF_OBJ_PIN", "BPF_OBJ_GET", "BPF_PROG_ATTACH",
	"BPF_PROG_DETACH", "BPF_PROG_TEST_RUN", "BPF_PROG_GET_NEXT_ID", "BPF_MAP_GET_NEXT_ID",
	"BPF_PROG_GET_FD_BY_ID", "BPF_MAP_GET_FD_BY_ID", "BPF_OBJ_GET_INFO_BY_FD", "BPF_PROG_QUERY",
	"BPF_RAW_TRACEPOINT_OPEN", "BPF_BTF_LOAD", "BPF_BTF_GET_FD_BY_ID", "BPF_TASK_FD_QUERY",
	"BPF_MAP_LOOKUP_AND_DELETE_ELEM", "BPF_MAP_FREEZE", "BPF_BTF_GET_NEXT_ID",
	"BPF_MAP_LOOKUP_BATCH", "BPF_MAP_LOOKUP_AND_DELETE_BATCH", "BPF_MAP_UPDATE_BATCH",
	"BPF_MAP_DELETE_BATCH", "BPF_LINK_CREATE", "BPF_LINK_UPDATE", "BPF_LINK_GET_FD_BY_ID",
	"BPF_LINK_GET_NEXT_ID", "BPF_ENABLE_STATS", "BPF_ITER_CREATE", "BPF_LINK_DETACH",
	"BPF_PROG_BIND_MAP", "BPF_TOKEN_CREATE",
}

func bpfCmdName(cmd int) string {
	if cmd >= 0 && cmd < len(bpfCmdNames) {
		return bpfCmdNames[cmd]
	}
	return "command " + strconv.Itoa(cmd)
}

// commString is a NUL-terminated kernel comm as a Go string.
func commString(c [16]int8) string {
	var b strings.Builder
	for _, ch := range c {
		if ch == 0 {
			break
		}
		b.WriteByte(byte(ch))
	}
	return b.String()
}
