//go:build ignore

// firma's BPF LSM programs (attach type BPF_LSM_CGROUP, kernel ≥ 6.0 with `bpf` in the active
// LSMs), attached to the same parent cgroup as redirect.c. They run for the processes (and, for
// socket hooks, the sockets) of that subtree only; the sidecar and the rest of the host never see
// them. They are optional: where the kernel lacks BPF LSM the loader reports it and the cgroup
// programs still enforce the network path on their own.
//
//   socket_create      refuse user sockets of every family but AF_INET, AF_INET6 and AF_UNIX:
//                      AF_PACKET, AF_NETLINK, AF_VSOCK, AF_XDP, AF_ALG, … (kernel sockets pass)
//   socket_setsockopt  refuse the route-changing options of common.h; unlike cgroup/setsockopt
//                      this hook also runs for compat (32-bit, int 0x80) setsockopt calls
//   bpf                refuse the bpf() syscall: an agent must not detach, replace or read
//                      firma's programs and maps, nor load its own
//   tun_dev_create/open refuse tun/tap devices, whose frames enter the stack as if received
//
// Every refusal is counted and reported on the shared ring buffer.

#include "common.h"
#include <bpf/bpf_tracing.h>

char __license[] SEC("license") = "Dual BSD/GPL";

struct socket;

static __always_inline int refuse_lsm(__u32 c, __u32 kind, struct refusal **out)
{
	count(c);
	struct refusal *r = refusal_start(bpf_get_current_cgroup_id(), kind);
	if (r)
		who_current(&r->who);
	*out = r;
	return VERDICT_REFUSE;
}

SEC("lsm_cgroup/socket_create")
int BPF_PROG(firma_socket_create, int family, int type, int protocol, int kern)
{
	if (kern || family == AF_INET || family == AF_INET6 || family == AF_UNIX)
		return VERDICT_PROCEED;
	struct refusal *r;
	refuse_lsm(CNT_REFUSE_FAMILY, REFUSAL_FAMILY, &r);
	if (r) {
		r->family = family;
		r->type = type;
		r->protocol = protocol;
		refusal_submit(r);
	}
	return VERDICT_REFUSE;
}

SEC("lsm_cgroup/socket_setsockopt")
int BPF_PROG(firma_socket_setsockopt, struct socket *sock, int level, int optname)
{
	if (!route_option(level, optname))
		return VERDICT_PROCEED;
	struct refusal *r;
	refuse_lsm(CNT_REFUSE_SOCKOPT, REFUSAL_SOCKOPT, &r);
	if (r) {
		r->level = level;
		r->optname = optname;
		refusal_submit(r);
	}
	return VERDICT_REFUSE;
}

SEC("lsm_cgroup/bpf")
int BPF_PROG(firma_bpf, int cmd)
{
	struct refusal *r;
	refuse_lsm(CNT_REFUSE_BPF, REFUSAL_BPF, &r);
	if (r) {
		r->bpf_cmd = cmd;
		refusal_submit(r);
	}
	return VERDICT_REFUSE;
}

SEC("lsm_cgroup/tun_dev_create")
int BPF_PROG(firma_tun_dev_create)
{
	struct refusal *r;
	refuse_lsm(CNT_REFUSE_TUN, REFUSAL_TUN, &r);
	if (r)
		refusal_submit(r);
	return VERDICT_REFUSE;
}

SEC("lsm_cgroup/tun_dev_open")
int BPF_PROG(firma_tun_dev_open, void *security)
{
	struct refusal *r;
	refuse_lsm(CNT_REFUSE_TUN, REFUSAL_TUN, &r);
	if (r)
		refusal_submit(r);
	return VERDICT_REFUSE;
}
