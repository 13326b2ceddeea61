//go:build ignore

// firma's kernel half. Attached to one parent cgroup, these programs see every socket that a process
// in that subtree creates and connects:
//
//   sock_create        refuse anything but TCP and UDP (raw, ICMP ping, SCTP, MPTCP, UDP-Lite)
//   connect4/6         TCP: remember the original destination and who asked, rewrite the destination
//                      to the sidecar's transparent port on loopback. UDP/TCP port 53: the same, to
//                      the sidecar's resolver. Any other UDP: refuse (clients fall back from QUIC).
//   sendmsg4/6         unconnected UDP: port 53 to the resolver, everything else refused
//   recvmsg4/6         DNS answers appear to come from the server the agent asked
//   getpeername4/6     a redirected TCP socket reports its original peer
//   sockops            once the local port exists, publish the record under the agent-side
//                      address so the sidecar can find it from accept()'s peer address
//   cgroup_skb/egress  the same for DNS datagrams, whose local port is bound after sendmsg
//
// Everything fails closed: no configuration, an address family it does not know, or a record it
// cannot store all refuse the connection (connect returns EPERM).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define VERDICT_REFUSE 0
#define VERDICT_PROCEED 1

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPV4_SADDR_OFF 12 /* offsetof(struct iphdr, saddr) */
#define IPV6_SADDR_OFF 8  /* offsetof(struct ipv6hdr, saddr) */

#define DNS_PORT 53
#define LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

char __license[] SEC("license") = "Dual BSD/GPL";

// Load-time settings (cilium/ebpf rewrites them before load). Zero means "not configured".
volatile const __u16 sidecar_port = 0; // transparent TCP listener, host order
volatile const __u16 dns_port = 0;     // resolver (UDP and TCP), host order; 0 = refuse DNS
volatile const __u8 ipv6_enabled = 0;  // the sidecar listens on [::1]; else native IPv6 is refused

// origin is what the kernel attests about one redirected socket.
struct origin {
	__u8 addr[16];  // original destination; IPv4 as ::ffff:a.b.c.d
	__u16 port;     // original destination port, host order
	__u8 family;    // AF_INET or AF_INET6: the family the agent connected with
	__u8 proto;     // IPPROTO_TCP or IPPROTO_UDP
	__u8 via_v4;    // 1: the redirected flow is IPv4 (AF_INET, or v4-mapped on AF_INET6)
	__u8 pad[3];
	__u32 pid;      // thread group id (the process)
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;
	__u64 cookie;   // socket cookie
	char comm[16];
};

// peer_key is the agent-side address of a redirected flow, as the sidecar sees it as its peer.
struct peer_key {
	__u8 addr[16]; // IPv4 as ::ffff:a.b.c.d
	__u16 port;    // host order
	__u8 proto;
	__u8 pad;
};

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
	CNT_MAX,
};

// Keep the counter enum in BTF so bpf2go emits its Go type.
const enum counter *unused_counter __attribute__((unused));

// Per-socket record, freed with the socket.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_origin SEC(".maps");

// Records by agent-side address, for the sidecar. TCP entries are deleted by the sidecar when it
// accepts; DNS entries are reused per query and age out (LRU).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} origins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		*v += 1;
}

static __always_inline int refuse(__u32 c)
{
	count(c);
	return VERDICT_REFUSE;
}

static __always_inline void set_mapped4(__u8 *dst, __u32 addr_be)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr_be, 4);
}

// ld32 reads one 32-bit context field. Without it clang merges neighbouring fields into a 64-bit
// load, which the verifier rejects for these contexts.
#define ld32(field) (*(volatile __u32 *)&(field))

static __always_inline int is_mapped4(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

// remember stores who is connecting where on the socket itself.
static __always_inline struct origin *remember(struct bpf_sock_addr *ctx, __u8 proto, __u8 via_v4)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	struct origin *o = bpf_sk_storage_get(&sk_origin, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->uid = (__u32)uid_gid;
	o->gid = uid_gid >> 32;
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->cookie = bpf_get_socket_cookie(ctx);
	o->proto = proto;
	o->via_v4 = via_v4;
	o->family = ctx->user_family;
	o->port = bpf_ntohs(ctx->user_port);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	return o;
}

// redirected_to is true for a port the programs redirect to: dialing it directly is refused.
static __always_inline int redirected_to(__u16 port)
{
	return port && (port == sidecar_port || port == dns_port);
}

// redirect_port is where a flow to port goes: the resolver for port 53 (UDP or TCP), the
// transparent listener for other TCP. It returns 0 for a flow that is refused, with *c the counter
// to charge; otherwise *c is the redirect counter.
static __always_inline __u16 redirect_port(__u16 port, __u8 proto, __u32 *c)
{
	if (port == DNS_PORT) {
		*c = dns_port ? CNT_REDIRECT_DNS : CNT_REFUSE_UNCONFIGURED;
		return dns_port;
	}
	if (proto == IPPROTO_TCP) {
		*c = CNT_REDIRECT_TCP;
		return sidecar_port;
	}
	*c = CNT_REFUSE_UDP;
	return 0;
}

static __always_inline int connect4(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u32 dst = ctx->user_ip4;
	__u16 port = bpf_ntohs(ctx->user_port);
	if (dst == bpf_htonl(LOOPBACK4) && redirected_to(port))
		return refuse(CNT_REFUSE_SELF);

	__u32 c;
	__u16 to = redirect_port(port, proto, &c);
	if (!to)
		return refuse(c);
	struct origin *o = remember(ctx, proto, 1);
	if (!o)
		return refuse(CNT_REFUSE_STORAGE);
	set_mapped4(o->addr, dst);
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = bpf_htons(to);
	count(c);
	return VERDICT_PROCEED;
}

static __always_inline int connect6(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u32 w0 = ld32(ctx->user_ip6[0]), w1 = ld32(ctx->user_ip6[1]), w2 = ld32(ctx->user_ip6[2]),
	      w3 = ld32(ctx->user_ip6[3]);
	__u16 port = bpf_ntohs(ctx->user_port);
	int mapped = is_mapped4(w0, w1, w2);
	int self_addr = mapped ? w3 == bpf_htonl(LOOPBACK4)
			       : (w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1));
	if (self_addr && redirected_to(port))
		return refuse(CNT_REFUSE_SELF);
	if (!mapped && !ipv6_enabled)
		return refuse(CNT_REFUSE_IPV6);

	__u32 c;
	__u16 to = redirect_port(port, proto, &c);
	if (!to)
		return refuse(c);
	struct origin *o = remember(ctx, proto, mapped);
	if (!o)
		return refuse(CNT_REFUSE_STORAGE);
	__builtin_memcpy(o->addr, &w0, 4);
	__builtin_memcpy(o->addr + 4, &w1, 4);
	__builtin_memcpy(o->addr + 8, &w2, 4);
	__builtin_memcpy(o->addr + 12, &w3, 4);
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(LOOPBACK4);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(to);
	count(c);
	return VERDICT_PROCEED;
}

// sock_proto classifies the socket: IPPROTO_TCP, IPPROTO_UDP, or 0 for anything else.
static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP)
		return IPPROTO_TCP;
	if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0;
}

// admit is what every connect and sendmsg hook checks first: a configured sidecar, the hook's own
// address family, and a TCP or UDP socket. It returns the protocol, or 0 once the refusal is
// counted.
static __always_inline __u8 admit(struct bpf_sock_addr *ctx, __u32 family)
{
	if (sidecar_port == 0) {
		count(CNT_REFUSE_UNCONFIGURED);
		return 0;
	}
	__u8 proto = ctx->user_family == family ? sock_proto(ctx) : 0;
	if (!proto)
		count(CNT_REFUSE_PROTO);
	return proto;
}

SEC("cgroup/connect4")
int firma_connect4(struct bpf_sock_addr *ctx)
{
	__u8 proto = admit(ctx, AF_INET);
	return proto ? connect4(ctx, proto) : VERDICT_REFUSE;
}

SEC("cgroup/connect6")
int firma_connect6(struct bpf_sock_addr *ctx)
{
	__u8 proto = admit(ctx, AF_INET6);
	return proto ? connect6(ctx, proto) : VERDICT_REFUSE;
}

// Unconnected UDP (sendto; the hooks only run for UDP): only DNS, to the resolver.
SEC("cgroup/sendmsg4")
int firma_sendmsg4(struct bpf_sock_addr *ctx)
{
	return admit(ctx, AF_INET) == IPPROTO_UDP ? connect4(ctx, IPPROTO_UDP) : VERDICT_REFUSE;
}

SEC("cgroup/sendmsg6")
int firma_sendmsg6(struct bpf_sock_addr *ctx)
{
	return admit(ctx, AF_INET6) == IPPROTO_UDP ? connect6(ctx, IPPROTO_UDP) : VERDICT_REFUSE;
}

// restore4 makes a redirected socket report its original peer instead of the sidecar.
static __always_inline void restore4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || ctx->user_ip4 != bpf_htonl(LOOPBACK4) || !redirected_to(bpf_ntohs(ctx->user_port)))
		return;
	struct origin *o = bpf_sk_storage_get(&sk_origin, sk, 0, 0);
	if (!o || !o->via_v4)
		return;
	__u32 a;
	__builtin_memcpy(&a, o->addr + 12, 4);
	ctx->user_ip4 = a;
	ctx->user_port = bpf_htons(o->port);
}

static __always_inline void restore6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || !redirected_to(bpf_ntohs(ctx->user_port)))
		return;
	__u32 w0 = ld32(ctx->user_ip6[0]), w1 = ld32(ctx->user_ip6[1]), w2 = ld32(ctx->user_ip6[2]),
	      w3 = ld32(ctx->user_ip6[3]);
	int v4 = is_mapped4(w0, w1, w2) && w3 == bpf_htonl(LOOPBACK4);
	int v6 = w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1);
	if (!v4 && !v6)
		return;
	struct origin *o = bpf_sk_storage_get(&sk_origin, sk, 0, 0);
	if (!o)
		return;
	__u32 a[4];
	__builtin_memcpy(a, o->addr, 16);
	ctx->user_ip6[0] = a[0];
	ctx->user_ip6[1] = a[1];
	ctx->user_ip6[2] = a[2];
	ctx->user_ip6[3] = a[3];
	ctx->user_port = bpf_htons(o->port);
}

SEC("cgroup/getpeername4")
int firma_getpeername4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return VERDICT_PROCEED;
}

SEC("cgroup/getpeername6")
int firma_getpeername6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return VERDICT_PROCEED;
}

SEC("cgroup/recvmsg4")
int firma_recvmsg4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return VERDICT_PROCEED;
}

SEC("cgroup/recvmsg6")
int firma_recvmsg6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return VERDICT_PROCEED;
}

// publish copies a socket's record to the map the sidecar reads, under the agent-side address.
static __always_inline void publish(struct origin *o, struct peer_key *k)
{
	if (bpf_map_update_elem(&origins, k, o, BPF_ANY) == 0)
		count(CNT_PUBLISHED);
	else
		count(CNT_PUBLISH_FAILED); // the sidecar finds no record and closes: fail closed
}

SEC("sockops")
int firma_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct origin *o = bpf_sk_storage_get(&sk_origin, sk, 0, 0);
	if (!o || o->proto != IPPROTO_TCP)
		return 1;
	struct peer_key k = {};
	k.proto = IPPROTO_TCP;
	k.port = (__u16)skops->local_port;
	// At TCP_CONNECT_CB a v4-mapped AF_INET6 socket has its IPv4 source in local_ip4 but not yet
	// in local_ip6, so the flow's family decides which field to read.
	if (o->via_v4) {
		set_mapped4(k.addr, skops->local_ip4);
	} else {
		__u32 a[4] = {ld32(skops->local_ip6[0]), ld32(skops->local_ip6[1]), ld32(skops->local_ip6[2]),
			      ld32(skops->local_ip6[3])};
		__builtin_memcpy(k.addr, a, 16);
	}
	publish(o, &k);
	return 1;
}

// DNS datagrams: the local port is only bound after sendmsg/connect ran, so the record is
// published from the first packet the socket sends. The source address comes from the packet's
// IP header: an unconnected socket's own address stays 0.0.0.0 while routing picks one per packet.
SEC("cgroup_skb/egress")
int firma_egress(struct __sk_buff *skb)
{
	struct bpf_sock *s = skb->sk;
	if (!s)
		return 1;
	s = bpf_sk_fullsock(s);
	if (!s || s->protocol != IPPROTO_UDP)
		return 1;
	struct origin *o = bpf_sk_storage_get(&sk_origin, s, 0, 0);
	if (!o || o->proto != IPPROTO_UDP)
		return 1;
	struct peer_key k = {};
	k.proto = IPPROTO_UDP;
	k.port = (__u16)s->src_port; // host order
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u32 saddr;
		if (bpf_skb_load_bytes(skb, IPV4_SADDR_OFF, &saddr, sizeof(saddr)))
			return 1; // no record: the sidecar refuses the query
		set_mapped4(k.addr, saddr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, IPV6_SADDR_OFF, k.addr, sizeof(k.addr)))
			return 1;
	} else {
		return 1;
	}
	publish(o, &k);
	return 1;
}

SEC("cgroup/sock_create")
int firma_sock_create(struct bpf_sock *sk)
{
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return VERDICT_PROCEED;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return VERDICT_PROCEED;
	return refuse(CNT_REFUSE_PROTO);
}
