/* Next hop by bpf_fib_lookup, then out of the same port (XDP_TX) or another (bpf_redirect).
 *
 * A per-CPU next-hop cache sits in front of bpf_fib_lookup (about half of a forwarded packet's
 * cost): maps `nexthops` and `nh_epoch` (maps.h), limits NH_CACHE_* (constants.h).
 *
 * The key holds every input of the lookup that the relay varies (addresses, ports, tos, ingress
 * device), so a hit returns what the FIB answered for the same question: ECMP routes that hash on
 * L3 or L4 fields, source or tos policy rules, and iif rules are honoured as before. Only
 * successful answers are cached: no route, no neighbour and too big always go through the FIB.
 * The route MTU is not returned on success, so an entry also records the largest tot_len the
 * FIB accepted and a longer packet asks the FIB again (the cache never forwards a packet the FIB
 * would refuse as too big).
 *
 * Trade-off: the kernel gives XDP no cheap way to learn that a route or neighbour changed, so an
 * entry is trusted for NH_CACHE_NS after its lookup (the program's coarse clock, clock.h: a
 * tick or two of resolution, read by a helper call once per jiffy). Within that window a route
 * or neighbour change (a new gateway, a neighbour MAC, a removed route) is not seen by packets
 * whose answer is cached; after it the next packet asks the FIB. Bumping nh_epoch[0] (one map
 * write) invalidates every entry at once. Neither map is pinned: each loaded program starts
 * with an empty cache.
 *
 * Layout: a direct-mapped per-CPU array (slot = hash of the key, the key stored and compared), not
 * a hash map: the lookup is inlined by the verifier and a miss overwrites the slot in place, with
 * no helper call and no allocation; a collision only costs a FIB lookup. Only this CPU's program
 * writes its slots (XDP does not nest on a CPU), so no locking is needed. */
#ifndef EDGE_FIB_H
#define EDGE_FIB_H

#include "constants.h"
#include "eth.h"
#include "maps.h"
#include "reasons.h"
#include "structs.h"

/* The slot of a key: a multiplicative hash (tests/bpf/bpfharness.py computes it too). */
static __always_inline __u32 nh_slot_of(const struct nh_key *k)
{
	__u32 x = k->daddr ^ (((__u32)k->sport << 16) | k->dport) ^ (k->ifindex << 8) ^ k->tos;

	x ^= k->saddr * 0x85ebca6bU;
	return (x * 0x9e3779b1U) >> (32 - NH_CACHE_BITS);
}

static __always_inline int nh_key_eq(const struct nh_key *a, const struct nh_key *b)
{
	return a->daddr == b->daddr && a->saddr == b->saddr && a->sport == b->sport &&
	       a->dport == b->dport && a->ifindex == b->ifindex && a->tos == b->tos;
}

/* Rewrites the MACs for egress port ifindex and returns fwd_reason with *same_port set when that
 * is the ingress port (the entry point sends XDP_TX); for another port it records the port with
 * bpf_redirect() (XDP_REDIRECT), or returns drop_redirect when the helper refuses. */
static __always_inline __u32 fib_send(struct xdp_md *ctx, __u32 ifindex, const __u8 *dmac,
				      const __u8 *smac, __u32 fwd_reason, int *same_port)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if ((void *)(eth + 1) > data_end)
		return REASON_DROP_ENCAP;
	mac_copy(eth->h_dest, dmac);
	mac_copy(eth->h_source, smac);
	if (ifindex == ctx->ingress_ifindex) {
		*same_port = 1;
		return fwd_reason;
	}
	if (bpf_redirect(ifindex, 0) != XDP_REDIRECT)
		return REASON_DROP_REDIRECT;
	return fwd_reason;
}

/* Sends the packet hop describes toward its next hop (now: clock.h's coarse clock):
 * fwd_reason (a forward reason) with *same_port as fib_send sets it, or what the FIB refused
 * (drop_fib, drop_too_big, or pass_fib_no_neigh: the kernel forwards it and resolves the
 * neighbour). */
static __always_inline __u32 fib_forward(struct xdp_md *ctx, const struct next_hop *hop,
					 __u32 fwd_reason, __u64 now, int *same_port)
{
	struct bpf_fib_lookup fib = {};
	struct nh_key nk = {
		.daddr = hop->daddr,
		.saddr = hop->saddr,
		.sport = hop->sport,
		.dport = hop->dport,
		.ifindex = ctx->ingress_ifindex,
		.tos = hop->tos,
	};
	__u32 slot = nh_slot_of(&nk), zero = 0, epoch = 0;
	struct nh_slot *c;
	__u32 *ep;
	int rc;

	ep = nh_epoch.lookup(&zero);
	if (ep)
		epoch = *ep;
	c = nexthops.lookup(&slot);
	if (c && nh_key_eq(&c->key, &nk) && c->val.epoch == epoch && now < c->val.expires_ns &&
	    hop->tot_len <= c->val.max_len)
		return fib_send(ctx, c->val.ifindex, c->val.dmac, c->val.smac, fwd_reason,
				same_port);

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
		return REASON_PASS_FIB_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return REASON_DROP_TOO_BIG;
	default: /* blackhole, unreachable, prohibit, not forwarded, forwarding disabled... */
		return REASON_DROP_FIB;
	}

	if (c) { /* a fresh answer replaces whatever held the slot (this CPU's copy only) */
		c->key = nk;
		c->val.expires_ns = now + NH_CACHE_NS;
		c->val.ifindex = fib.ifindex;
		c->val.epoch = epoch;
		c->val.max_len = hop->tot_len;
		mac_copy(c->val.dmac, fib.dmac);
		mac_copy(c->val.smac, fib.smac);
	}
	return fib_send(ctx, fib.ifindex, fib.dmac, fib.smac, fwd_reason, same_port);
}

/* The IPv6 twin of fib_forward for a decapsulated reply to an IPv6 client (hop->v6): an AF_INET6
 * lookup, answered only when the receiving interface forwards IPv6
 * (net.ipv6.conf.<if>.forwarding=1). Not cached: the next-hop cache is keyed by IPv4 addresses,
 * and only this one path is IPv6 (the tunnel is IPv4). */
static __always_inline __u32 fib_forward6(struct xdp_md *ctx, const struct next_hop *hop,
					  __u32 fwd_reason, int *same_port)
{
	struct bpf_fib_lookup fib = {.family = AF_INET6};
	int rc;

	fib.flowinfo = edge_htonl((__u32)hop->tos << 20);
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = hop->sport;
	fib.dport = hop->dport;
	fib.tot_len = hop->tot_len;
	__builtin_memcpy(fib.ipv6_src, hop->saddr6, 16);
	__builtin_memcpy(fib.ipv6_dst, hop->daddr6, 16);
	fib.ifindex = ctx->ingress_ifindex;

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return REASON_PASS_FIB_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return REASON_DROP_TOO_BIG;
	default:
		return REASON_DROP_FIB;
	}
	return fib_send(ctx, fib.ifindex, fib.dmac, fib.smac, fwd_reason, same_port);
}

#endif
