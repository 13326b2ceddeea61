// What redirect.c (cgroup programs) and guard.c (BPF LSM programs) share: the counters, the
// refusal events and their ring buffer, the per-cgroup rate limit, and the list of socket options
// that change where a packet goes.
//
// Both objects declare these maps pinned by name; the loader hands redirect.c's maps to guard.c so
// that there is one ring buffer, one rate limit and one set of counters.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define VERDICT_REFUSE 0
#define VERDICT_PROCEED 1

#define LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

enum counter {
	CNT_REDIRECT_TCP,
	CNT_REDIRECT_DNS,
	CNT_PUBLISHED,
	CNT_REFUSE_UNCONFIGURED,
	CNT_REFUSE_SELF,
	CNT_REFUSE_UDP,
	CNT_REFUSE_IPV6,
	CNT_REFUSE_PROTO,
	CNT_REFUSE_STORAGE,
	CNT_PUBLISH_FAILED,
	CNT_REFUSE_FAMILY,
	CNT_REFUSE_SOCKOPT,
	CNT_REFUSE_BIND,
	CNT_DROP_EGRESS,
	CNT_DROP_INGRESS,
	CNT_REFUSE_BPF,
	CNT_REFUSE_TUN,
	CNT_EVENT_SENT,       // refusal events written to the ring buffer
	CNT_EVENT_SUPPRESSED, // refusals not written because their cgroup exceeded the rate limit
	CNT_EVENT_LOST,       // refusals not written because the ring buffer was full
	CNT_MAX,
};

// What the kernel refused. Values are part of the Go API (bpf.RefusalKind): append only.
enum refusal_kind {
	REFUSAL_UNCONFIGURED = 1, // the programs run without a sidecar port: everything is refused
	REFUSAL_SELF,             // dialing the sidecar's own ports directly
	REFUSAL_UDP,              // UDP other than DNS
	REFUSAL_IPV6,             // native IPv6 while the sidecar has no [::1] listener
	REFUSAL_PROTO,            // an inet socket that is not TCP or UDP (raw, ICMP, SCTP, MPTCP…)
	REFUSAL_STORAGE,          // no room for the socket's record
	REFUSAL_FAMILY,           // a socket family other than inet, inet6 and unix
	REFUSAL_SOCKOPT,          // a socket option that changes where packets go
	REFUSAL_BIND,             // binding one of the sidecar's ports
	REFUSAL_EGRESS,           // an outgoing packet not routed over loopback to the sidecar
	REFUSAL_INGRESS,          // an incoming packet neither from the sidecar nor to an inbound port
	REFUSAL_BPF,              // the bpf() syscall
	REFUSAL_TUN,              // creating or attaching a tun/tap device
};

// who is the process a record or a report names.
struct who {
	__u32 pid; // thread group id
	__u32 tid;
	__u32 uid;
	__u32 gid;
	char comm[16];
};

// refusal is one event on the ring buffer. Packet refusals (egress, ingress) run in softirq as often
// as in the sender's context, so their pid/uid/comm are those of the process that created the
// socket (0 and "" for a socket created before the programs were attached).
struct refusal {
	__u64 cgroup_id;  // the process's cgroup; for packets, the socket's
	__u64 cookie;     // socket cookie, 0 where there is no socket yet
	__u64 suppressed; // refusals of this cgroup dropped by the rate limit since its previous event
	struct who who;
	__u32 kind;       // enum refusal_kind
	__s32 family;     // socket family (AF_*)
	__s32 type;       // socket type (SOCK_*)
	__s32 protocol;   // socket protocol as asked for in socket()
	__s32 level;      // setsockopt level
	__s32 optname;    // setsockopt option name
	__s32 bpf_cmd;    // bpf() command
	__u32 ifindex;    // packets: the device routed to (egress) or arrived on (ingress)
	__u8 addr[16];    // destination (connect, sendmsg, egress), source (ingress), local (bind);
	                  // IPv4 as ::ffff:a.b.c.d
	__u16 port;       // port of addr, host order
	__u16 local_port; // packets: the socket's own port, host order
	__u8 proto;       // packets: the IP protocol (or first IPv6 next header)
	__u8 pad[3];
};

// Keep the enums and the event struct in BTF so that bpf2go emits their Go types.
const enum counter *unused_counter __attribute__((unused));
const enum refusal_kind *unused_refusal_kind __attribute__((unused));
const struct refusal *unused_refusal __attribute__((unused));

// Token bucket per cgroup, in nanoseconds of credit: an event costs refusal_cost_ns, credit grows
// by one per nanosecond up to refusal_burst_ns. LRU maps cannot hold spin locks, so the bucket is
// updated without one: CPUs racing on the same cgroup may each spend the same credit (a flood gets
// through at most once per CPU more), while the suppressed count is only changed atomically and so
// is never lost nor delivered twice.
struct bucket {
	__u64 last;       // ktime of the last update
	__u64 credit;
	__u64 suppressed; // refusals not reported since the last event
};

// Load-time settings of the rate limit (cilium/ebpf rewrites them before load).
volatile const __u64 refusal_cost_ns = 0;  // 1e9 / events per second; 0 = no limit
volatile const __u64 refusal_burst_ns = 0; // burst × cost

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

// Pinned so that refusals made while the sidecar restarts wait for the next one.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} refusals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // cgroup id
	__type(value, struct bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} refusal_buckets SEC(".maps");

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		*v += 1;
}

static __always_inline void set_mapped4(__u8 *dst, __u32 addr_be)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr_be, 4);
}

// rate_take decides whether cgroup cg may report one more refusal now. When it may, *carry is the
// number of its refusals suppressed since its previous event (and the bucket's count restarts).
static __always_inline int rate_take(__u64 cg, __u64 *carry)
{
	*carry = 0;
	if (refusal_cost_ns == 0)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	struct bucket *b = bpf_map_lookup_elem(&refusal_buckets, &cg);
	if (!b) {
		struct bucket fresh = {};
		fresh.last = now;
		fresh.credit = refusal_burst_ns;
		bpf_map_update_elem(&refusal_buckets, &cg, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&refusal_buckets, &cg);
		if (!b)
			return 1; // report rather than lose: the ring buffer bounds the flood
	}
	__u64 last = b->last, credit = b->credit;
	if (now > last)
		credit += now - last;
	if (credit > refusal_burst_ns)
		credit = refusal_burst_ns;
	b->last = now;
	if (credit < refusal_cost_ns) {
		b->credit = credit;
		__sync_fetch_and_add(&b->suppressed, 1);
		return 0;
	}
	b->credit = credit - refusal_cost_ns;
	*carry = __sync_lock_test_and_set(&b->suppressed, 0);
	return 1;
}

// rate_giveback returns a taken event's count to its cgroup's bucket when it could not be written.
static __always_inline void rate_giveback(__u64 cg, __u64 n)
{
	struct bucket *b = bpf_map_lookup_elem(&refusal_buckets, &cg);
	if (b)
		__sync_fetch_and_add(&b->suppressed, n);
}

// refusal_start reserves an event for a refusal by cgroup cg, or returns 0 (counted) when the rate
// limit or a full ring buffer suppresses it. The caller fills it in and calls refusal_submit.
static __always_inline struct refusal *refusal_start(__u64 cg, __u32 kind)
{
	__u64 carry;
	if (!rate_take(cg, &carry)) {
		count(CNT_EVENT_SUPPRESSED);
		return 0;
	}
	struct refusal *r = bpf_ringbuf_reserve(&refusals, sizeof(*r), 0);
	if (!r) {
		count(CNT_EVENT_LOST);
		rate_giveback(cg, carry + 1);
		return 0;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->cgroup_id = cg;
	r->kind = kind;
	r->suppressed = carry;
	return r;
}

static __always_inline void refusal_submit(struct refusal *r)
{
	bpf_ringbuf_submit(r, 0);
	count(CNT_EVENT_SENT);
}

// who_current fills in the process that is making the call (not for softirq hooks).
static __always_inline void who_current(struct who *w)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	w->pid = pid_tgid >> 32;
	w->tid = (__u32)pid_tgid;
	w->uid = (__u32)uid_gid;
	w->gid = uid_gid >> 32;
	bpf_get_current_comm(w->comm, sizeof(w->comm));
}

// Socket option levels and names (uapi values, x86-64 and generic).
#define SOL_IP 0
#define SOL_SOCKET 1
#define SOL_TCP 6
#define SOL_UDP 17
#define SOL_IPV6 41

#define SO_DONTROUTE 5
#define SO_BINDTODEVICE 25
#define SO_MARK 36
#define SO_BINDTOIFINDEX 62

#define IP_OPTIONS 4
#define IP_RETOPTS 7
#define IP_FREEBIND 15
#define IP_IPSEC_POLICY 16
#define IP_XFRM_POLICY 17
#define IP_TRANSPARENT 19
#define IP_UNICAST_IF 50

#define IPV6_2292HOPOPTS 3
#define IPV6_2292DSTOPTS 4
#define IPV6_2292RTHDR 5
#define IPV6_2292PKTOPTIONS 6
#define IPV6_NEXTHOP 9
#define IPV6_IPSEC_POLICY 34
#define IPV6_XFRM_POLICY 35
#define IPV6_PKTINFO 50
#define IPV6_HOPOPTS 54
#define IPV6_RTHDRDSTOPTS 55
#define IPV6_RTHDR 57
#define IPV6_DSTOPTS 59
#define IPV6_TRANSPARENT 75
#define IPV6_UNICAST_IF 76
#define IPV6_FREEBIND 78

#define TCP_REPAIR 19
#define TCP_REPAIR_QUEUE 20
#define TCP_QUEUE_SEQ 21
#define TCP_REPAIR_OPTIONS 22
#define TCP_REPAIR_WINDOW 29

#define UDP_ENCAP 100

// route_option is true for a socket option that decides where a packet goes or what it carries in
// its IP header: an interface, a mark (policy routing), source routes and IPv6 extension headers,
// IPsec policies, transparent or non-local sources, a TCP connection rebuilt by hand, UDP
// encapsulation. IPV6_PKTINFO is judged by its value (cgroup/setsockopt only); here it is not listed.
static __always_inline int route_option(int level, int optname)
{
	switch (level) {
	case SOL_SOCKET:
		return optname == SO_BINDTODEVICE || optname == SO_BINDTOIFINDEX || optname == SO_MARK ||
		       optname == SO_DONTROUTE;
	case SOL_IP:
		return optname == IP_OPTIONS || optname == IP_RETOPTS || optname == IP_FREEBIND ||
		       optname == IP_IPSEC_POLICY || optname == IP_XFRM_POLICY || optname == IP_TRANSPARENT ||
		       optname == IP_UNICAST_IF;
	case SOL_IPV6:
		return optname == IPV6_2292HOPOPTS || optname == IPV6_2292DSTOPTS ||
		       optname == IPV6_2292RTHDR || optname == IPV6_2292PKTOPTIONS || optname == IPV6_NEXTHOP ||
		       optname == IPV6_IPSEC_POLICY || optname == IPV6_XFRM_POLICY || optname == IPV6_HOPOPTS ||
		       optname == IPV6_RTHDRDSTOPTS || optname == IPV6_RTHDR || optname == IPV6_DSTOPTS ||
		       optname == IPV6_TRANSPARENT || optname == IPV6_UNICAST_IF || optname == IPV6_FREEBIND;
	case SOL_TCP:
		return optname == TCP_REPAIR || optname == TCP_REPAIR_QUEUE || optname == TCP_QUEUE_SEQ ||
		       optname == TCP_REPAIR_OPTIONS || optname == TCP_REPAIR_WINDOW;
	case SOL_UDP:
		return optname == UDP_ENCAP;
	}
	return 0;
}
