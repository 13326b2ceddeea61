//go:build ignore

// firma's kernel half: cgroup programs attached to one parent cgroup. They see every socket that a
// process in that subtree creates, and every packet such a socket sends or receives. The sidecar
// runs outside the subtree, so none of this ever touches its own sockets.
//
//   sock_create        refuse inet sockets other than TCP and UDP (raw, ICMP ping, SCTP, MPTCP,
//                      UDP-Lite); remember who created each socket (for reporting its packets)
//   connect4/6         TCP: remember the original destination and who asked, rewrite the destination
//                      to the sidecar's transparent port on loopback. UDP/TCP port 53: the same, to
//                      the sidecar's resolver. Any other UDP: refuse (clients fall back from QUIC).
//   sendmsg4/6         unconnected UDP: port 53 to the resolver, everything else refused
//   recvmsg4/6         DNS answers appear to come from the server the agent asked
//   getpeername4/6     a redirected TCP socket reports its original peer
//   sockops            once the local port exists, publish the record under the agent-side
//                      address so the sidecar can find it from accept()'s peer address
//   setsockopt         refuse options that change where packets go (interface, mark, source
//                      routes, IPv6 extension headers, IPsec policy, transparent/free bind,
//                      TCP repair, UDP encapsulation, sticky IPV6_PKTINFO with an address)
//   bind4/6            refuse binding the sidecar's ports (on any address, with any reuse flag);
//   post_bind4/6       the same for a port the kernel chose
//   cgroup_skb/egress  the backstop: a packet passes only if it is plain TCP/UDP (no IPv4 options,
//                      no IPv6 extension headers) routed over loopback to 127.0.0.1 or ::1 and the
//                      sidecar's ports — whatever socket options, cmsgs or compat syscalls did —
//                      or is a reply from an accepted connection on a configured inbound port.
//                      It also publishes DNS records, whose local port exists only after sendmsg.
//   cgroup_skb/ingress a packet reaches an enforced socket only from the sidecar's ports on
//                      loopback, or to a configured inbound port
//
// Every refusal is counted and reported on the ring buffer (common.h). Everything fails closed: no
// configuration, an address family it does not know, or a record it cannot store all refuse.

#include "common.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define LOOPBACK_IFINDEX 1 /* the loopback device is the first in every network namespace */
#define DNS_PORT 53
#define MAX_INBOUND_PORTS 16

char __license[] SEC("license") = "Dual BSD/GPL";

// Load-time settings (cilium/ebpf rewrites them before load). Zero means "not configured".
volatile const __u16 sidecar_port = 0; // transparent TCP listener, host order
volatile const __u16 dns_port = 0;     // resolver (UDP and TCP), host order; 0 = refuse DNS
volatile const __u8 ipv6_enabled = 0;  // the sidecar listens on [::1]; else native IPv6 is refused
// Ports on which enforced processes may accept connections and datagrams from anywhere, and send
// TCP replies from; 0 entries are unused.
volatile const __u16 inbound_ports[MAX_INBOUND_PORTS] = {};

// origin is what the kernel attests about one redirected socket.
struct origin {
	__u8 addr[16];  // original destination; IPv4 as ::ffff:a.b.c.d
	__u16 port;     // original destination port, host order
	__u8 family;    // AF_INET or AF_INET6: the family the agent connected with
	__u8 proto;     // IPPROTO_TCP or IPPROTO_UDP
	__u8 via_v4;    // 1: the redirected flow is IPv4 (AF_INET, or v4-mapped on AF_INET6)
	__u8 pad[3];
	struct who who; // the process that connected
	__u64 cgroup_id;
	__u64 cookie;   // socket cookie
};

// peer_key is the agent-side address of a redirected flow, as the sidecar sees it as its peer.
struct peer_key {
	__u8 addr[16]; // IPv4 as ::ffff:a.b.c.d
	__u16 port;    // host order
	__u8 proto;
	__u8 pad;
};

// owner is who created a socket, for reporting packets that are sent from softirq as often as from
// the process.
struct owner {
	__u64 cookie;
	struct who who;
};

// Per-socket record, freed with the socket.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_origin SEC(".maps");

// Per-socket creator; an accepted socket inherits its listener's (BPF_F_CLONE).
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct owner);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_owner SEC(".maps");

// Records by agent-side address, for the sidecar. TCP entries are deleted by the sidecar when it
// accepts; DNS entries are reused per query and age out (LRU).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} origins SEC(".maps");

// ld32 reads one 32-bit context field. Without it clang merges neighbouring fields into a 64-bit
// load, which the verifier rejects for these contexts.
#define ld32(field) (*(volatile __u32 *)&(field))

static __always_inline int is_mapped4(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

// refuse_addr counts and reports a refused connect, sendmsg or bind. is6 must be a constant: the
// verifier lets each hook read only its own family's address fields.
static __always_inline int refuse_addr(struct bpf_sock_addr *ctx, __u32 c, __u32 kind, int is6)
{
	count(c);
	struct refusal *r = refusal_start(bpf_get_current_cgroup_id(), kind);
	if (!r)
		return VERDICT_REFUSE;
	who_current(&r->who);
	r->cookie = bpf_get_socket_cookie(ctx);
	r->family = ctx->family;
	r->type = ctx->type;
	r->protocol = ctx->protocol;
	r->port = bpf_ntohs(ctx->user_port);
	if (is6) {
		__u32 a[4] = {ld32(ctx->user_ip6[0]), ld32(ctx->user_ip6[1]), ld32(ctx->user_ip6[2]),
			      ld32(ctx->user_ip6[3])};
		__builtin_memcpy(r->addr, a, 16);
	} else {
		set_mapped4(r->addr, ctx->user_ip4);
	}
	refusal_submit(r);
	return VERDICT_REFUSE;
}

// refusal_sock counts a refusal in a hook that has the socket but no address (sock_create,
// post_bind, setsockopt) and starts its report, or returns 0 when the report is suppressed.
static __always_inline struct refusal *refusal_sock(struct bpf_sock *sk, __u32 c, __u32 kind)
{
	count(c);
	struct refusal *r = refusal_start(bpf_get_current_cgroup_id(), kind);
	if (!r)
		return 0;
	who_current(&r->who);
	r->family = sk->family;
	r->type = sk->type;
	r->protocol = sk->protocol;
	return r;
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
	who_current(&o->who);
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->cookie = bpf_get_socket_cookie(ctx);
	o->proto = proto;
	o->via_v4 = via_v4;
	o->family = ctx->user_family;
	o->port = bpf_ntohs(ctx->user_port);
	return o;
}

// redirected_to is true for a port the programs redirect to: dialing or binding it is refused.
static __always_inline int redirected_to(__u16 port)
{
	return port && (port == sidecar_port || port == dns_port);
}

// redirect_port is where a flow to port goes: the resolver for port 53 (UDP or TCP), the
// transparent listener for other TCP. It returns 0 for a flow that is refused, with *c and *kind
// the counter and refusal to charge; otherwise *c is the redirect counter.
static __always_inline __u16 redirect_port(__u16 port, __u8 proto, __u32 *c, __u32 *kind)
{
	if (port == DNS_PORT) {
		*c = dns_port ? CNT_REDIRECT_DNS : CNT_REFUSE_UNCONFIGURED;
		*kind = REFUSAL_UNCONFIGURED;
		return dns_port;
	}
	if (proto == IPPROTO_TCP) {
		*c = CNT_REDIRECT_TCP;
		return sidecar_port;
	}
	*c = CNT_REFUSE_UDP;
	*kind = REFUSAL_UDP;
	return 0;
}

static __always_inline int connect4(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u32 dst = ctx->user_ip4;
	__u16 port = bpf_ntohs(ctx->user_port);
	if (dst == bpf_htonl(LOOPBACK4) && redirected_to(port))
		return refuse_addr(ctx, CNT_REFUSE_SELF, REFUSAL_SELF, 0);

	__u32 c, kind = 0;
	__u16 to = redirect_port(port, proto, &c, &kind);
	if (!to)
		return refuse_addr(ctx, c, kind, 0);
	struct origin *o = remember(ctx, proto, 1);
	if (!o)
		return refuse_addr(ctx, CNT_REFUSE_STORAGE, REFUSAL_STORAGE, 0);
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
		return refuse_addr(ctx, CNT_REFUSE_SELF, REFUSAL_SELF, 1);
	if (!mapped && !ipv6_enabled)
		return refuse_addr(ctx, CNT_REFUSE_IPV6, REFUSAL_IPV6, 1);

	__u32 c, kind = 0;
	__u16 to = redirect_port(port, proto, &c, &kind);
	if (!to)
		return refuse_addr(ctx, c, kind, 1);
	struct origin *o = remember(ctx, proto, mapped);
	if (!o)
		return refuse_addr(ctx, CNT_REFUSE_STORAGE, REFUSAL_STORAGE, 1);
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
// counted and reported.
static __always_inline __u8 admit(struct bpf_sock_addr *ctx, __u32 family, int is6)
{
	if (sidecar_port == 0) {
		refuse_addr(ctx, CNT_REFUSE_UNCONFIGURED, REFUSAL_UNCONFIGURED, is6);
		return 0;
	}
	__u8 proto = ctx->user_family == family ? sock_proto(ctx) : 0;
	if (!proto)
		refuse_addr(ctx, CNT_REFUSE_PROTO, REFUSAL_PROTO, is6);
	return proto;
}

SEC("cgroup/connect4")
int firma_connect4(struct bpf_sock_addr *ctx)
{
	__u8 proto = admit(ctx, AF_INET, 0);
	return proto ? connect4(ctx, proto) : VERDICT_REFUSE;
}

SEC("cgroup/connect6")
int firma_connect6(struct bpf_sock_addr *ctx)
{
	__u8 proto = admit(ctx, AF_INET6, 1);
	return proto ? connect6(ctx, proto) : VERDICT_REFUSE;
}

// Unconnected UDP (sendto; the hooks only run for UDP): only DNS, to the resolver.
SEC("cgroup/sendmsg4")
int firma_sendmsg4(struct bpf_sock_addr *ctx)
{
	return admit(ctx, AF_INET, 0) == IPPROTO_UDP ? connect4(ctx, IPPROTO_UDP) : VERDICT_REFUSE;
}

SEC("cgroup/sendmsg6")
int firma_sendmsg6(struct bpf_sock_addr *ctx)
{
	return admit(ctx, AF_INET6, 1) == IPPROTO_UDP ? connect6(ctx, IPPROTO_UDP) : VERDICT_REFUSE;
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

// pkt is what the backstop reads of a packet's headers.
struct pkt {
	__u32 saddr[4]; // IPv4 as ::ffff:a.b.c.d
	__u32 daddr[4];
	__u16 sport;    // host order; 0 when there is no plain TCP/UDP header to read
	__u16 dport;
	__u8 proto;     // IPv4 protocol, or the first IPv6 next header
	__u8 plain;     // TCP or UDP right after an IPv4 header without options or fragmentation,
	                // or right after the IPv6 header
};

// parse reads the network and transport headers; skb->data is at the network header in both
// cgroup_skb hooks. It returns 0 for an IPv4 or IPv6 packet it could read.
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 l4 = 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		__u32 s, d;
		__builtin_memcpy(&s, h + 12, 4);
		__builtin_memcpy(&d, h + 16, 4);
		p->saddr[2] = p->daddr[2] = bpf_htonl(0x0000ffff);
		p->saddr[3] = s;
		p->daddr[3] = d;
		p->proto = h[9];
		__u16 frag = ((__u16)(h[6] & 0x3f) << 8) | h[7]; // MF and offset; DF is fine
		l4 = (h[0] & 0xf) * 4;
		p->plain = (h[0] & 0xf) == 5 && frag == 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		__builtin_memcpy(p->saddr, h + 8, 16);
		__builtin_memcpy(p->daddr, h + 24, 16);
		p->proto = h[6];
		l4 = 40;
		p->plain = 1;
	} else {
		return -1;
	}
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) {
		p->plain = 0;
		return 0;
	}
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports))) {
		p->plain = 0;
		return 0;
	}
	p->sport = bpf_ntohs(ports[0]);
	p->dport = bpf_ntohs(ports[1]);
	return 0;
}

// is_sidecar_addr is true for 127.0.0.1 and ::1, the addresses the sidecar listens on.
static __always_inline int is_sidecar_addr(const __u32 *a)
{
	if (a[0] != 0 || a[1] != 0)
		return 0;
	if (a[2] == bpf_htonl(0x0000ffff))
		return a[3] == bpf_htonl(LOOPBACK4);
	return a[2] == 0 && a[3] == bpf_htonl(1);
}

// sidecar_service is true for a port of the sidecar's that proto may use: the transparent
// listener (TCP) and the resolver (TCP and UDP).
static __always_inline int sidecar_service(__u8 proto, __u16 port)
{
	if (proto == IPPROTO_TCP)
		return redirected_to(port);
	return dns_port && port == dns_port;
}

// sidecar_path is true for a plain packet routed over loopback between a sidecar address and
// port (far side: destination for egress, source for ingress) and anything.
static __always_inline int sidecar_path(struct __sk_buff *skb, struct pkt *p, const __u32 *far, __u16 far_port)
{
	return p->plain && skb->ifindex == LOOPBACK_IFINDEX && is_sidecar_addr(far) &&
	       sidecar_service(p->proto, far_port);
}

static __always_inline int inbound_port(__u16 port)
{
	if (!port)
		return 0;
#pragma unroll
	for (int i = 0; i < MAX_INBOUND_PORTS; i++)
		if (inbound_ports[i] == port)
			return 1;
	return 0;
}

// refuse_packet counts and reports a dropped packet; egress reports its destination, ingress its
// source.
static __always_inline int refuse_packet(struct __sk_buff *skb, struct bpf_sock *sk, struct pkt *p, int egress)
{
	count(egress ? CNT_DROP_EGRESS : CNT_DROP_INGRESS);
	__u64 cg = sk ? bpf_sk_cgroup_id(sk) : bpf_skb_cgroup_id(skb);
	struct refusal *r = refusal_start(cg, egress ? REFUSAL_EGRESS : REFUSAL_INGRESS);
	if (!r)
		return 0;
	if (sk) {
		struct owner *w = bpf_sk_storage_get(&sk_owner, sk, 0, 0);
		if (w)
			r->who = w->who;
		r->family = sk->family;
		r->type = sk->type;
		r->protocol = sk->protocol;
	}
	r->cookie = bpf_get_socket_cookie(skb);
	r->ifindex = skb->ifindex;
	r->proto = p->proto;
	if (egress) {
		__builtin_memcpy(r->addr, p->daddr, 16);
		r->port = p->dport;
		r->local_port = p->sport;
	} else {
		__builtin_memcpy(r->addr, p->saddr, 16);
		r->port = p->sport;
		r->local_port = p->dport;
	}
	refusal_submit(r);
	return 0;
}

// publish_dns publishes a DNS socket's record from its first packet: the local port is only bound
// after sendmsg/connect ran, and an unconnected socket's own address stays 0.0.0.0 while routing
// picks one per packet, so both come from the packet.
static __always_inline void publish_dns(struct bpf_sock *sk, struct pkt *p)
{
	struct origin *o = bpf_sk_storage_get(&sk_origin, sk, 0, 0);
	if (!o || o->proto != IPPROTO_UDP)
		return;
	struct peer_key k = {};
	k.proto = IPPROTO_UDP;
	k.port = p->sport;
	__builtin_memcpy(k.addr, p->saddr, 16);
	publish(o, &k);
}

// packet_sock is the full socket a packet belongs to, or 0.
static __always_inline struct bpf_sock *packet_sock(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	return sk ? bpf_sk_fullsock(sk) : 0;
}

SEC("cgroup_skb/egress")
int firma_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = packet_sock(skb);
	struct pkt p = {};
	if (parse(skb, &p) == 0) {
		if (sidecar_path(skb, &p, p.daddr, p.dport)) {
			if (p.proto == IPPROTO_UDP && sk)
				publish_dns(sk, &p);
			return 1;
		}
		// A reply on a connection accepted on an inbound port: never a socket that connected.
		if (p.plain && p.proto == IPPROTO_TCP && inbound_port(p.sport) && sk &&
		    !bpf_sk_storage_get(&sk_origin, sk, 0, 0))
			return 1;
	}
	return refuse_packet(skb, sk, &p, 1);
}

SEC("cgroup_skb/ingress")
int firma_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = packet_sock(skb);
	struct pkt p = {};
	if (parse(skb, &p) == 0) {
		if (sidecar_path(skb, &p, p.saddr, p.sport))
			return 1;
		if (p.plain && inbound_port(p.dport))
			return 1;
	}
	return refuse_packet(skb, sk, &p, 0);
}

SEC("cgroup/sock_create")
int firma_sock_create(struct bpf_sock *sk)
{
	if ((sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP) ||
	    (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)) {
		struct owner *w = bpf_sk_storage_get(&sk_owner, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (w) {
			who_current(&w->who);
			w->cookie = bpf_get_socket_cookie(sk);
		}
		return VERDICT_PROCEED;
	}
	struct refusal *r = refusal_sock(sk, CNT_REFUSE_PROTO, REFUSAL_PROTO);
	if (r)
		refusal_submit(r);
	return VERDICT_REFUSE;
}

// pktinfo_routes is true unless a sticky IPV6_PKTINFO value is all zeros (no source address, no
// interface). A value that cannot be read whole is refused.
static __always_inline int pktinfo_routes(struct bpf_sockopt *ctx)
{
	__u8 *v = ctx->optval, *end = ctx->optval_end;
	if (v + 20 > end) // struct in6_pktinfo
		return 1;
	__u8 any = 0;
#pragma unroll
	for (int i = 0; i < 20; i++)
		any |= v[i];
	return any != 0;
}

// The refusal leaves ctx->optlen alone: for a value larger than a page the kernel then uses the
// caller's own buffer, as it must.
SEC("cgroup/setsockopt")
int firma_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, optname = ctx->optname;
	if (!route_option(level, optname) &&
	    !(level == SOL_IPV6 && optname == IPV6_PKTINFO && pktinfo_routes(ctx)))
		return VERDICT_PROCEED;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return VERDICT_REFUSE;
	struct refusal *r = refusal_sock(sk, CNT_REFUSE_SOCKOPT, REFUSAL_SOCKOPT);
	if (r) {
		// The hook has no cookie helper: the socket's own record has it (for an accepted
		// socket, its listener's).
		struct owner *w = bpf_sk_storage_get(&sk_owner, sk, 0, 0);
		if (w)
			r->cookie = w->cookie;
		r->level = level;
		r->optname = optname;
		refusal_submit(r);
	}
	return VERDICT_REFUSE;
}

SEC("cgroup/bind4")
int firma_bind4(struct bpf_sock_addr *ctx)
{
	if (redirected_to(bpf_ntohs(ctx->user_port)))
		return refuse_addr(ctx, CNT_REFUSE_BIND, REFUSAL_BIND, 0);
	return VERDICT_PROCEED;
}

SEC("cgroup/bind6")
int firma_bind6(struct bpf_sock_addr *ctx)
{
	if (redirected_to(bpf_ntohs(ctx->user_port)))
		return refuse_addr(ctx, CNT_REFUSE_BIND, REFUSAL_BIND, 1);
	return VERDICT_PROCEED;
}

// After bind(…, port 0) the kernel has chosen a port: it must not be one of the sidecar's either.
SEC("cgroup/post_bind4")
int firma_post_bind4(struct bpf_sock *sk)
{
	if (!redirected_to(sk->src_port))
		return VERDICT_PROCEED;
	struct refusal *r = refusal_sock(sk, CNT_REFUSE_BIND, REFUSAL_BIND);
	if (r) {
		r->cookie = bpf_get_socket_cookie(sk);
		set_mapped4(r->addr, sk->src_ip4);
		r->port = sk->src_port;
		refusal_submit(r);
	}
	return VERDICT_REFUSE;
}

SEC("cgroup/post_bind6")
int firma_post_bind6(struct bpf_sock *sk)
{
	if (!redirected_to(sk->src_port))
		return VERDICT_PROCEED;
	struct refusal *r = refusal_sock(sk, CNT_REFUSE_BIND, REFUSAL_BIND);
	if (r) {
		r->cookie = bpf_get_socket_cookie(sk);
		__u32 a[4] = {ld32(sk->src_ip6[0]), ld32(sk->src_ip6[1]), ld32(sk->src_ip6[2]),
			      ld32(sk->src_ip6[3])};
		__builtin_memcpy(r->addr, a, 16);
		r->port = sk->src_port;
		refusal_submit(r);
	}
	return VERDICT_REFUSE;
}
