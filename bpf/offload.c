//go:build ignore

// The offload of allowed CONNECT tunnels: what the sidecar relays from an upstream to the agent goes
// straight into the agent socket's receive queue, instead of through a second TCP connection over
// loopback (the sidecar's accepted socket, loopback, the agent's socket). The bytes still leave the
// upstream socket through the sidecar's splice, but never enter user space, and the kernel's work
// per byte drops by most of a TCP connection's (CPU per GiB relayed: 1.33 s over TCP, 0.79–1.10 s
// offloaded, 0.66–0.76 s for a direct connection). The agent's sends still reach the sidecar over
// TCP.
//
//   firma_offload_down   sk_msg on the sidecar's accepted socket of an offloaded tunnel
//                        (offload_sidecar): every sendmsg is redirected into the receive queue of
//                        the agent's socket (offload_agents), synchronously, in the sidecar's call
//   firma_offload_adopt  run by the sidecar through BPF_PROG_TEST_RUN: finds the agent's socket —
//                        the peer of the connection the sidecar accepted — and puts it in
//                        offload_agents
//   firma_offload_state  run the same way: whether the agent has read everything that reached its
//                        socket over TCP, and how many bytes wait unread in it
//
// The sidecar adopts the agent's socket before it relays anything to it, but switches its own socket
// over only once the agent has read, over TCP, something it relayed after that: a recv(2) the agent
// was blocked in before adoption waits on the TCP queue alone and would never see a redirected byte;
// one that returned with TCP bytes is over, and every later one reads the redirected queue first.
// The switch also waits until nothing is in flight or unread over TCP, so redirected bytes never
// overtake TCP ones.
//
// Only sockets the agent reads without blocking are adopted: the kernel's read of an offloaded
// socket answers a blocking reader woken for anything but data (its own write space, a state
// change) with EAGAIN, which such a reader takes for an error. And only TLS tunnels (the sidecar's
// choice): TLS libraries read with recv(2), while splice(2) does not see redirected bytes.
//
// Why this and not more (measured on 6.18): the kernel's sk_skb redirects (upstream segments
// straight to the agent) acknowledge what they redirect at once and queue it for a worker without
// bound or backpressure (2 GiB queued for an agent that did not read), deliver it at most a receive
// buffer per jiffy (12 MB/s), and let a FIN overtake what is still queued (the agent read 22 MiB of
// 1 GiB before its EOF); an sk_msg redirect to another socket's egress (the agent's sends straight
// upstream) answers EAGAIN when that socket's buffer is full and never wakes the sender — a
// non-blocking agent stalls for good. An sk_msg program can look up no other socket to avoid either
// (bpf_sk_release is not available to it). What remains correct is this: the redirect is
// synchronous (order, and the FIN the sidecar sends after its last byte, are kept), and the sidecar
// bounds what waits unread in the agent's socket by asking firma_offload_state before it sends more
// than its bound, and gives the tunnel back to TCP's flow control when the agent stops reading.
//
// Nothing here is pinned: the maps and programs live as long as the sidecar's descriptors, so a
// sidecar that stops or crashes takes every offloaded flow with it (its sockets close, the maps are
// freed, the agent's socket reverts to plain TCP towards a closed peer). Nothing forwards without a
// sidecar. Sockets leave the maps when they close.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define ETH_HLEN 14

char __license[] SEC("license") = "Dual BSD/GPL";

#define O_NONBLOCK 04000

// The socket fields the programs read, relocated against the running kernel's BTF (CO-RE).
struct file___offload {
	unsigned int f_flags;
} __attribute__((preserve_access_index));

struct socket___offload {
	struct file___offload *file;
} __attribute__((preserve_access_index));

struct sock___offload {
	struct {
		struct {
			int counter;
		} rmem_alloc;
	} sk_backlog;
	struct socket___offload *sk_socket;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 rcv_nxt;
	__u32 copied_seq; // after the last byte the application read
} __attribute__((preserve_access_index));

// offload_req is what the sidecar asks of firma_offload_adopt and firma_offload_queued: the
// agent's socket is the one whose local end is agent_addr:agent_port and whose peer is
// sidecar_addr:sidecar_port (the accepted connection seen from the other end). Ports in network
// order; IPv4 in the first four bytes.
struct offload_req {
	__u8 agent_addr[16];
	__u8 sidecar_addr[16];
	__u16 agent_port;
	__u16 sidecar_port;
	__u32 family; // AF_INET or AF_INET6
	__u64 key;    // the agent socket's key in offload_agents
};

// What firma_offload_adopt returns. Values are part of the Go API: append only.
enum adopt_result {
	ADOPT_OK = 0,
	ADOPT_BAD_REQUEST,
	ADOPT_NOT_FOUND, // no such socket: the agent closed it
	ADOPT_NOT_OPEN,  // it is no longer established (the agent shut it down)
	ADOPT_TAKEN,     // the socket is in offload_agents already, or the map is full
	ADOPT_BLOCKING,  // the agent reads it in blocking mode
};

// What firma_offload_state returns besides a count of queued bytes (>= 0).
enum agent_state {
	AGENT_GONE = -1,   // the socket closed
	AGENT_UNREAD = -2, // TCP bytes wait unread in it
};

const struct offload_req *unused_offload_req __attribute__((unused));
const enum adopt_result *unused_adopt_result __attribute__((unused));
const enum agent_state *unused_agent_state __attribute__((unused));

// Agents' sockets of offloaded tunnels: redirect targets only, no program runs on them. Keyed by a
// key the sidecar chooses.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} offload_agents SEC(".maps");

// The sidecar's accepted sockets of offloaded tunnels, with firma_offload_down.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} offload_sidecar SEC(".maps");

// The agent socket's key, kept on the sidecar's accepted socket.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} offload_peer SEC(".maps");

SEC("sk_msg")
int firma_offload_down(struct sk_msg_md *msg)
{
	if (!msg->sk)
		return SK_DROP;
	__u64 *peer = bpf_sk_storage_get(&offload_peer, msg->sk, 0, 0);
	if (!peer)
		return SK_DROP;
	// SK_DROP when the agent's socket has closed: the sidecar's send fails and the tunnel ends.
	return bpf_msg_redirect_hash(msg, &offload_agents, peer, BPF_F_INGRESS);
}

// agent_socket finds the agent's socket of a request: the connection the sidecar accepted, seen
// from its other end (a segment to the agent's socket comes from the sidecar's address and port).
// While the sidecar holds its end open, no other established socket in this network namespace has
// this four-tuple. The caller releases it.
static __always_inline struct bpf_sock *agent_socket(struct __sk_buff *skb, struct offload_req *req)
{
	struct bpf_sock_tuple t = {};
	if (req->family == AF_INET) {
		__builtin_memcpy(&t.ipv4.saddr, req->sidecar_addr, 4);
		__builtin_memcpy(&t.ipv4.daddr, req->agent_addr, 4);
		t.ipv4.sport = req->sidecar_port;
		t.ipv4.dport = req->agent_port;
		return bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (req->family == AF_INET6) {
		__builtin_memcpy(t.ipv6.saddr, req->sidecar_addr, 16);
		__builtin_memcpy(t.ipv6.daddr, req->agent_addr, 16);
		t.ipv6.sport = req->sidecar_port;
		t.ipv6.dport = req->agent_port;
		return bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	return 0;
}

static __always_inline int adopt(struct bpf_sock *sk, struct offload_req *req)
{
	if (sk->state != BPF_TCP_ESTABLISHED)
		return ADOPT_NOT_OPEN;
	// Only a socket the agent reads without blocking: the kernel's read of an offloaded socket
	// answers a blocking reader that is woken for anything but data (its own write space, a state
	// change) with EAGAIN, which such a reader takes for an error.
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return ADOPT_NOT_OPEN;
	struct socket___offload *sock = ((struct sock___offload *)tp)->sk_socket;
	if (!sock || !sock->file || !(sock->file->f_flags & O_NONBLOCK))
		return ADOPT_BLOCKING;
	if (bpf_map_update_elem(&offload_agents, &req->key, sk, BPF_NOEXIST))
		return ADOPT_TAKEN;
	return ADOPT_OK;
}

SEC("tc")
int firma_offload_adopt(struct __sk_buff *skb)
{
	struct offload_req req;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &req, sizeof(req)))
		return ADOPT_BAD_REQUEST;
	struct bpf_sock *sk = agent_socket(skb, &req);
	if (!sk)
		return ADOPT_NOT_FOUND;
	int ret = adopt(sk, &req);
	bpf_sk_release(sk);
	return ret;
}

// firma_offload_state returns how many bytes wait unread in the agent's socket (its receive
// memory), or an enum agent_state.
SEC("tc")
int firma_offload_state(struct __sk_buff *skb)
{
	struct offload_req req;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &req, sizeof(req)))
		return AGENT_GONE;
	struct bpf_sock *sk = bpf_map_lookup_elem(&offload_agents, &req.key);
	if (!sk)
		return AGENT_GONE;
	int state = AGENT_GONE;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp && tp->copied_seq != tp->rcv_nxt)
		state = AGENT_UNREAD;
	else if (tp)
		state = ((struct sock___offload *)tp)->sk_backlog.rmem_alloc.counter;
	bpf_sk_release(sk);
	return state;
}
