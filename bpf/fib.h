/* Next hop by bpf_fib_lookup, then out of the same port (XDP_TX) or another (bpf_redirect). */
#ifndef EDGE_FIB_H
#define EDGE_FIB_H

#include "constants.h"
#include "counters.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* The IPv4/UDP packet that now follows the Ethernet header at ctx, as the FIB sees it. */
struct next_hop {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 tot_len; /* host order: the helper checks it against the route MTU */
	__u8 tos;
};

static __always_inline verdict_t fib_forward(struct xdp_md *ctx, const struct next_hop *hop,
					     __u32 fwd_reason)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	void *data_end;
	long act;
	int rc;

	fib.family = AF_INET;
	fib.tos = hop->tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = hop->sport;
	fib.dport = hop->dport;
	fib.tot_len = hop->tot_len;
	fib.ipv4_src = hop->saddr;
	fib.ipv4_dst = hop->daddr;
	fib.ifindex = ctx->ingress_ifindex;

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		/* The kernel forwards it and resolves the neighbour; later packets take the fast path. */
		return PASS(REASON_PASS_FIB_NO_NEIGH);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return DROP(REASON_DROP_TOO_BIG);
	default: /* blackhole, unreachable, prohibit, not forwarded, forwarding disabled... */
		return DROP(REASON_DROP_FIB);
	}

	eth = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if ((void *)(eth + 1) > data_end)
		return DROP(REASON_DROP_ENCAP);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return VERDICT(fwd_reason, XDP_TX);
	act = bpf_redirect(fib.ifindex, 0);
	if (act != XDP_REDIRECT)
		return DROP(REASON_DROP_REDIRECT);
	return VERDICT(fwd_reason, XDP_REDIRECT);
}

#endif
