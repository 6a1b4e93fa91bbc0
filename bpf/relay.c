/* xdp_relay: the edge relay's XDP program (docs/wire-format.md).
 *
 * Client datagrams to a VIP:port are tunnelled to the transceiver that owns the call: the first
 * packet (a STUN Binding request) is routed by the keyed hint in its USERNAME and recorded in the
 * flow map, later packets follow the flow map. Tunnel datagrams from transceivers are checked,
 * stripped and forwarded to the client. Everything else goes to the kernel untouched.
 *
 * Return convention. Every path step (a function that can decide what becomes of the packet)
 * returns a __u32: a reason (reasons.h) when it decided, or REASON_CONTINUE when it did its part
 * and the next step goes on. What else a step finds or builds goes out through pointer
 * parameters. A forward reason means "ready to leave": from_client and from_tunnel hand it to
 * fib_forward, which passes it on or replaces it with what the FIB refused. Only the entry point,
 * xdp_relay, turns the final reason into an XDP action (reason_action), after counting it: one
 * reason per packet, counted in one place. The action needs one fact besides the reason, whether
 * a forwarded packet leaves by the port it came in on (XDP_TX) or another (XDP_REDIRECT): fib_send
 * reports it through *same_port. Pure computations (checksums, hashes, the base64 decoder,
 * nh_slot_of) return their value. */
#include "constants.h"
#include "structs.h"
#include "maps.h"
#include "clock.h"
#include "reasons.h"
#include "counters.h"
#include "parse.h"
#include "stun.h"
#include "siphash.h"
#include "ufrag.h"
#include "encap.h"
#include "hop.h"
#include "flowcopy.h"
#include "fib.h"

/* fib_forward and the encapsulation are each inlined once: copies would blow the 512-byte
 * stack. */

/* What a flow hit counts as. A -D hook for tests/bpf/test_bpf_reasons.py, which adds a reason
 * past the last one (EDGE_EXTRA_REASONS) and proves that its kind, not its number, decides what
 * the program does with the packet. */
#ifndef EDGE_FLOW_HIT_REASON
#define EDGE_FLOW_HIT_REASON REASON_FWD_FLOW
#endif

/* A client datagram's flow: its source, and the VIP it was sent to. */
static __always_inline struct flow_key flow_key_of(const struct udp4 *d)
{
	struct flow_key fk = {
		.client_addr = d->saddr,
		.vip_addr = d->daddr,
		.client_port = d->sport,
		.vip_port = d->dport,
	};

	return fk;
}

static __always_inline struct flow6_key flow6_key_of(const struct udp6 *d)
{
	struct flow6_key fk = {
		.client_port = d->sport,
		.vip_port = d->dport,
	};

	__builtin_memcpy(fk.client_addr, d->saddr, 16);
	__builtin_memcpy(fk.vip_addr, d->daddr, 16);
	return fk;
}

/* A client packet within the idle time (mod 2^16 units: a flow idle for a multiple of ~19.5
 * hours looks live again for the idle time, which only delays its move). */
static __always_inline int flow_live(const struct flow_val *fv, __u16 seen,
				     const struct relay_config *cfg)
{
	__u16 idle = cfg->flow_idle_s ? cfg->flow_idle_s : FLOW_IDLE_S;

	return (__u16)(seen - fv->seen) < idle;
}

/* The tunnel endpoint of fv's transceiver, into *out: REASON_CONTINUE, or drop_unknown_txr when
 * the transceiver left the map (its calls stop at once).
 *
 * Why a cache: the transceivers lookup is a hash lookup on every forwarded packet, both ways. A
 * flow keeps the endpoint it last found (flow_val.txr_cache) with the map generation it found it
 * under (txr_gen), and uses it while that generation stands and the flow is live. The
 * controller gives txr_gen a new value right after it removes or changes a transceiver, and the
 * generation is read here before the lookup, so an endpoint cached before a removal is never
 * used after the new value is written. Liveness bounds how old a cached generation can be (a
 * flow idle for FLOW_IDLE_S looks up again), so 16 bits of generation cannot wrap around to a
 * stale entry. */
static __always_inline __u32 flow_transceiver(struct flow_val *fv, int live, struct txr_val *out)
{
	__u32 zero = 0, *genp = txr_gen.lookup(&zero);
	__u64 gen = genp ? *genp & 0xffff : 0;
	__u64 cache = *(volatile __u64 *)&fv->txr_cache;
	struct txr_key tk = {.cluster = fv->cluster, .id = fv->id};
	struct txr_val *txr;

	if (gen && live && cache >> TXR_CACHE_GEN_SHIFT == gen) {
		out->addr = (__u32)cache;
		out->port = (__u16)(cache >> TXR_CACHE_PORT_SHIFT);
		return REASON_CONTINUE;
	}
	txr = transceivers.lookup(&tk);
	if (!txr) {
		if (cache)
			fv->txr_cache = 0;
		return REASON_DROP_UNKNOWN_TXR;
	}
	*out = *txr;
	if (gen) /* one 64-bit store: racing CPUs leave one whole entry, never a mix */
		*(volatile __u64 *)&fv->txr_cache = (__u64)txr->addr |
						    (__u64)txr->port << TXR_CACHE_PORT_SHIFT |
						    gen << TXR_CACHE_GEN_SHIFT;
	return REASON_CONTINUE;
}

/* Takes one flow creation from the ufrag's window: REASON_CONTINUE, or drop_ufrag_flood once it
 * created its limit of flows in the window. Racing CPUs may overshoot by one each. */
static __always_inline __u32 ufrag_rate_take(__u64 tag, const struct relay_config *cfg,
					     __u64 now)
{
	__u64 window = (__u64)(cfg->ufrag_window_s ? cfg->ufrag_window_s : UFRAG_WINDOW_S) *
		       1000000000ULL;
	__u32 limit = cfg->ufrag_flow_limit ? cfg->ufrag_flow_limit : UFRAG_FLOW_LIMIT;
	struct ufrag_rate *r = ufrag_rates.lookup(&tag);
	struct ufrag_rate fresh = {.start_ns = now, .count = 1};

	if (r && now - r->start_ns < window) {
		if (r->count >= limit)
			return REASON_DROP_UFRAG_FLOOD;
		__sync_fetch_and_add(&r->count, 1);
		return REASON_CONTINUE;
	}
	ufrag_rates.update(&tag, &fresh);
	return REASON_CONTINUE;
}

/* May this Binding request create a flow for fk or fk6, whichever is given (or move its idle
 * flow)? The source must be a unicast address that is not ours, the ufrag young enough and
 * within its flow budget. */
static __always_inline __u32 may_create(const struct flow_key *fk, const struct flow6_key *fk6,
					const struct ufrag_hint *hint,
					const struct relay_config *cfg, __u64 now)
{
	__u32 max_age = cfg->ufrag_max_age ? cfg->ufrag_max_age : UFRAG_MAX_AGE;

	if (fk6) {
		if (addr6_class(fk6->client_addr) != REASON_CONTINUE ||
		    addr6_eq(fk6->client_addr, fk6->vip_addr))
			return REASON_DROP_BAD_CLIENT_ADDR;
	} else if (addr_class(fk->client_addr) != REASON_CONTINUE ||
		   fk->client_addr == cfg->tunnel_addr || fk->client_addr == fk->vip_addr) {
		return REASON_DROP_BAD_CLIENT_ADDR;
	}
	if (!cfg->wall_offset_ns)
		return REASON_DROP_NO_CONFIG;
	if (!ufrag_epoch_fresh(hint->epoch, now + cfg->wall_offset_ns, max_age))
		return REASON_DROP_UFRAG_EXPIRED;
	return ufrag_rate_take(hint->tag, cfg, now);
}

/* A STUN Binding request: route by ufrag, and create or move the flow only when it changes, and
 * only as may_create allows. A live flow to a transceiver still in the map never moves. The flow
 * is fk's in `flows`, or (an IPv6 client: fk6 given, fk NULL) fk6's in `flows6`; the callers
 * pass constants, so each inlined copy keeps one family. */
static __always_inline __u32 route_stun(struct xdp_md *ctx, struct flow_key *fk,
					struct flow6_key *fk6, struct flow_val *fv,
					__u32 msg_end, const struct relay_config *cfg,
					__u64 *clock, struct txr_val *out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *pl = data + (fk6 ? PAYLOAD_OFF6 : PAYLOAD_OFF);
	struct ufrag_hint hint = {};
	struct txr_key tk = {};
	struct txr_val *txr;
	__u32 off = 0, len = 0, reason;
	__u64 now;
	__u16 seen;

	reason = stun_find_username(pl, data_end, msg_end, &off, &len);
	if (reason != REASON_CONTINUE)
		return reason;
	reason = ufrag_verify(pl, data_end, off, len, &tk, &hint);
	if (reason != REASON_CONTINUE)
		return reason;
	txr = transceivers.lookup(&tk);
	if (!txr) {
		__u32 cluster = tk.cluster;

		return clusters.lookup(&cluster) ? REASON_DROP_UNKNOWN_TXR
						 : REASON_DROP_UNKNOWN_CLUSTER;
	}
	*out = *txr;

	now = clock_now(clock);
	seen = seen_of(now);
	if (fv && fv->cluster == tk.cluster && fv->id == tk.id) {
		if (fv->seen != seen)
			fv->seen = seen;
		return REASON_FWD_STUN_KNOWN; /* an existing flow continues whatever the epoch */
	}
	if (fv && flow_live(fv, seen, cfg)) {
		struct txr_key old = {.cluster = fv->cluster, .id = fv->id};

		if (transceivers.lookup(&old)) /* a transceiver that left frees its flows at once */
			return REASON_DROP_FLOW_LIVE;
	}
	reason = may_create(fk, fk6, &hint, cfg, now);
	if (reason != REASON_CONTINUE)
		return reason;
	{
		struct flow_val nv = {
			.cluster = tk.cluster,
			.seen = seen,
			.id = tk.id,
			.created_ns = bpf_ktime_get_ns(),
		};

		if (fk6) {
			flows6.update(fk6, &nv);
		} else {
			flows.update(fk, &nv);
			flow_written(fk); /* after the write: every CPU's copy of the old one is stale */
		}
	}
	return REASON_FWD_STUN_NEW;
}

/* Which transceiver gets a client datagram d (or, an IPv6 client, d6: the other NULL): by ufrag
 * for a Binding request, else by its flow fv (NULL: none; the entry point looked it up). */
static __always_inline __u32 pick_transceiver(struct xdp_md *ctx, const struct udp4 *d,
					      const struct udp6 *d6, struct flow_val *fv,
					      const struct relay_config *cfg, __u64 *clock,
					      struct txr_val *out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 plen = (d6 ? d6->udp_len : d->udp_len) - UDP_HDR_LEN, reason;
	int live;
	__u16 seen;

	if (plen) {
		__u32 binding_end = 0;

		reason = stun_classify(data + (d6 ? PAYLOAD_OFF6 : PAYLOAD_OFF), data_end, plen,
				       &binding_end);
		if (reason != REASON_CONTINUE)
			return reason;
		if (binding_end && d6) {
			struct flow6_key fk6 = flow6_key_of(d6);

			return route_stun(ctx, NULL, &fk6, fv, binding_end, cfg, clock, out);
		}
		if (binding_end) {
			struct flow_key fk = flow_key_of(d);

			return route_stun(ctx, &fk, NULL, fv, binding_end, cfg, clock, out);
		}
	}

	if (!fv)
		return REASON_DROP_NO_FLOW;
	seen = seen_of(clock_now(clock));
	live = flow_live(fv, seen, cfg);
	if (fv->seen != seen) /* about once a second per flow: the line stays clean otherwise */
		fv->seen = seen;
	reason = flow_transceiver(fv, live, out);
	return reason == REASON_CONTINUE ? EDGE_FLOW_HIT_REASON : reason;
}

/* A datagram from a client to one of our VIPs: into the tunnel to its transceiver, one hop
 * (TTL) less, after its header checksum verified. */
static __always_inline __u32 from_client(struct xdp_md *ctx, const struct udp4 *d,
					 struct flow_val *fv, const struct relay_config *cfg,
					 __u64 *clock, struct next_hop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HDR_LEN;
	struct txr_val txr = {};
	__u32 reason, step;

	if ((void *)(ip + 1) > data_end)
		return REASON_DROP_TRUNCATED;
	if (!ipv4_csum_ok(ip))
		return REASON_DROP_BAD_IP_CSUM;
	if (ip->ttl <= 1)
		return REASON_DROP_TTL_EXPIRED;
	reason = pick_transceiver(ctx, d, NULL, fv, cfg, clock, &txr);
	if (!reason_is_forward(reason))
		return reason;
	ipv4_decrement_ttl(ip); /* only now: a packet passed to the kernel keeps its TTL */
	hop->saddr = cfg->tunnel_addr;
	hop->daddr = txr.addr;
	hop->sport = flow_entropy(d->saddr, d->sport, d->dport);
	hop->dport = txr.port;
	hop->tos = d->tos;
	hop->tot_len = d->tot_len + ENCAP_LEN;
	step = encap_udp4(ctx, d->tos, d->tot_len, hop->saddr, hop->daddr, hop->sport, hop->dport);
	return step == REASON_CONTINUE ? reason : step;
}

/* An IPv6 client's datagram to one of our VIP6s: into the (IPv4) tunnel, hop limit one less (no
 * checksum covers it). */
static __always_inline __u32 from_client6(struct xdp_md *ctx, const struct udp6 *d,
					  struct flow_val *fv, const struct relay_config *cfg,
					  __u64 *clock, struct next_hop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct edge_ipv6hdr *ip6 = data + ETH_HDR_LEN;
	struct txr_val txr = {};
	__u32 reason, step;
	__u16 inner_len = IPV6_HDR_LEN + d->plen;

	if ((void *)(ip6 + 1) > data_end)
		return REASON_DROP_TRUNCATED;
	if (d->hop_limit <= 1)
		return REASON_DROP_TTL_EXPIRED;
	reason = pick_transceiver(ctx, NULL, d, fv, cfg, clock, &txr);
	if (!reason_is_forward(reason))
		return reason;
	ip6->hop_limit--; /* only now: a packet passed to the kernel keeps its hop limit */
	hop->saddr = cfg->tunnel_addr;
	hop->daddr = txr.addr;
	hop->sport = flow_entropy6(d->saddr, d->sport, d->dport);
	hop->dport = txr.port;
	hop->tos = d->tclass;
	hop->tot_len = inner_len + ENCAP_LEN;
	step = encap_udp4(ctx, d->tclass, inner_len, hop->saddr, hop->daddr, hop->sport, hop->dport);
	return step == REASON_CONTINUE ? reason : step;
}

/* Whether a tunnel datagram came in on a link with the tunnel role (relayctl load
 * --tunnel-iface): one spoofing a transceiver from the client side is refused here. */
static __always_inline int tunnel_link(const struct relay_config *cfg, __u32 ifindex)
{
	int found = 0;

	/* an empty slot is 0, and no device has ifindex 0 */
#pragma unroll
	for (int i = 0; i < MAX_TUNNEL_LINKS; i++)
		found |= cfg->tunnel_ifindex[i] == ifindex;
	return found;
}

/* Why a tunnel datagram that matched no flow of its sender is refused: a sender that is no
 * transceiver and an inner source that is no VIP name themselves first; else `reason`. Only
 * refusals pay these two lookups: a flow of the sender implies both. */
static __always_inline __u32 tunnel_refusal(const struct udp4 *d, const struct flow_key *fk,
					    __u32 reason)
{
	struct vip_key peer = {.addr = d->saddr, .port = d->sport};
	struct vip_key src = {.addr = fk->vip_addr, .port = fk->vip_port};

	if (!txr_addrs.lookup(&peer))
		return REASON_DROP_TUNNEL_STRANGER;
	if (!vips.lookup(&src))
		return REASON_DROP_TUNNEL_FOREIGN_SRC;
	return reason;
}

/* tunnel_refusal for an IPv6 reply: the inner source must be a VIP6 (port 0 is never one). */
static __always_inline __u32 tunnel_refusal6(const struct udp4 *d, const struct flow6_key *fk,
					     __u32 reason)
{
	struct vip_key peer = {.addr = d->saddr, .port = d->sport};
	struct vip6_key src = {.port = fk->vip_port};

	__builtin_memcpy(src.addr, fk->vip_addr, 16);
	if (!txr_addrs.lookup(&peer))
		return REASON_DROP_TUNNEL_STRANGER;
	if (!fk->vip_port || !vips6.lookup(&src))
		return REASON_DROP_TUNNEL_FOREIGN_SRC;
	return reason;
}

/* A tunnel datagram carrying an IPv6 reply (§3): the twin of from_tunnel's checks, then the
 * outer header stripped and the frame's ethertype IPv6's, hop limit one less. */
static __always_inline __u32 from_tunnel6(struct xdp_md *ctx, const struct udp4 *d,
					  const struct relay_config *cfg, __u64 *clock,
					  struct next_hop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct edge_ipv6hdr *ip6 = data + PAYLOAD_OFF;
	struct udphdr *udp = data + PAYLOAD_OFF + IPV6_HDR_LEN;
	struct flow6_key fk = {};
	struct txr_val txr = {};
	struct flow_val *fv;
	__u32 step;

	step = check_inner_udp6(ip6, data_end, d->udp_len - UDP_HDR_LEN);
	if (step != REASON_CONTINUE)
		return step;
	if ((void *)(udp + 1) > data_end) /* checked above; for the verifier after the call */
		return REASON_DROP_TUNNEL_BAD_INNER;
	step = addr6_class(ip6->daddr);
	if (step != REASON_CONTINUE)
		return step;
	if (addr6_eq(ip6->daddr, ip6->saddr))
		return REASON_DROP_DECAP_SELF;
	__builtin_memcpy(fk.client_addr, ip6->daddr, 16);
	__builtin_memcpy(fk.vip_addr, ip6->saddr, 16);
	fk.client_port = udp->dest;
	fk.vip_port = udp->source;
	fv = flows6.lookup(&fk);
	if (!fv)
		return tunnel_refusal6(d, &fk, REASON_DROP_DECAP_NO_FLOW);
	step = flow_transceiver(fv, flow_live(fv, seen_of(clock_now(clock)), cfg), &txr);
	if (step != REASON_CONTINUE || txr.addr != d->saddr || txr.port != d->sport)
		return tunnel_refusal6(d, &fk, REASON_DROP_DECAP_WRONG_TXR);
	if (ip6->hop_limit <= 1)
		return REASON_DROP_TTL_EXPIRED;
	ip6->hop_limit--;
	hop->v6 = 1;
	__builtin_memcpy(hop->saddr6, fk.vip_addr, 16);
	__builtin_memcpy(hop->daddr6, fk.client_addr, 16);
	hop->sport = fk.vip_port;
	hop->dport = fk.client_port;
	hop->tos = (__u8)(edge_ntohl(ip6->vtc_flow) >> 20);
	hop->tot_len = d->udp_len - UDP_HDR_LEN; /* = 40 + the inner payload length, checked */
	step = decap_udp4(ctx, ETH_P_IPV6);
	return step == REASON_CONTINUE ? REASON_FWD_DECAP : step;
}

/* A tunnel datagram: a transceiver's reply, on a tunnel link, from one of our VIPs, to a client
 * with a flow on this relay for that VIP that goes to this very transceiver, one hop less. */
static __always_inline __u32 from_tunnel(struct xdp_md *ctx, const struct udp4 *d,
					 const struct relay_config *cfg, __u64 *clock,
					 struct next_hop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + PAYLOAD_OFF;
	struct udphdr *udp = data + PAYLOAD_OFF + IPV4_HDR_LEN;
	struct flow_key fk = {};
	struct txr_val txr = {};
	struct flow_val *fv;
	__u32 step;

	if (!tunnel_link(cfg, ctx->ingress_ifindex))
		return REASON_DROP_TUNNEL_WRONG_LINK;
	step = check_inner_udp4(ip, data_end, d->udp_len - UDP_HDR_LEN);
	if (step != REASON_CONTINUE) {
		if (inner_is_ipv6(ip, data_end)) /* only a refused IPv4 payload pays this */
			return from_tunnel6(ctx, d, cfg, clock, hop);
		return step;
	}
	step = addr_class(ip->daddr);
	if (step != REASON_CONTINUE)
		return step;
	if (ip->daddr == cfg->tunnel_addr || ip->daddr == ip->saddr)
		return REASON_DROP_DECAP_SELF;
	/* the reply's flow: the client is its destination, the VIP its source */
	fk.client_addr = ip->daddr;
	fk.vip_addr = ip->saddr;
	fk.client_port = udp->dest;
	fk.vip_port = udp->source;
	fv = flow_lookup(&fk, 0, clock);
	if (!fv)
		return tunnel_refusal(d, &fk, REASON_DROP_DECAP_NO_FLOW);
	step = flow_transceiver(fv, flow_live(fv, seen_of(clock_now(clock)), cfg), &txr);
	if (step != REASON_CONTINUE || txr.addr != d->saddr || txr.port != d->sport)
		return tunnel_refusal(d, &fk, REASON_DROP_DECAP_WRONG_TXR);
	if (ip->ttl <= 1)
		return REASON_DROP_TTL_EXPIRED;
	ipv4_decrement_ttl(ip);
	hop->saddr = ip->saddr;
	hop->sport = udp->source;
	hop->daddr = ip->daddr;
	hop->dport = udp->dest;
	hop->tos = ip->tos;
	hop->tot_len = d->udp_len - UDP_HDR_LEN; /* = the inner tot_len, checked, already host order */
	step = decap_udp4(ctx, ETH_P_IP);
	return step == REASON_CONTINUE ? REASON_FWD_DECAP : step;
}

/* An IPv6 packet that is not UDP: ours only if it goes to a VIP6 address (the port-0 entry of
 * vips6) with an extension header (refused by name, §3), else the kernel's. */
static __always_inline __u32 ipv6_not_udp(const struct udp6 *d)
{
	struct vip6_key addr = {};

	if (d->nexthdr != NEXTHDR_HOP && d->nexthdr != NEXTHDR_ROUTING &&
	    d->nexthdr != NEXTHDR_DEST && d->nexthdr != NEXTHDR_FRAGMENT)
		return REASON_PASS_NOT_OURS;
	__builtin_memcpy(addr.addr, d->daddr, 16);
	if (!vips6.lookup(&addr))
		return REASON_PASS_NOT_OURS;
	return d->nexthdr == NEXTHDR_FRAGMENT ? REASON_DROP_FRAGMENT : REASON_DROP_IPV6_EXT_HEADERS;
}

/* The path of an IPv6 packet (the IPv4 parser found no IPv4): a client datagram to a VIP6, or
 * the kernel's. Its reason; a forward reason with *hop filled. The slow path is IPv4-only: an
 * IPv6 datagram without a flow is drop_no_flow whatever the flags. */
static __always_inline __u32 relay6(struct xdp_md *ctx, struct next_hop *hop, __u64 *now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct relay_config *cfg;
	struct flow_val *fv;
	struct udp6 d = {};
	__u32 zero = 0, reason;

	reason = parse_udp6(data, data_end, &d);
	if (reason != REASON_CONTINUE)
		return reason;
	if (d.nexthdr != IPPROTO_UDP)
		return ipv6_not_udp(&d);
	{
		/* the flow first, as for IPv4 */
		struct flow6_key fk = flow6_key_of(&d);
		struct vip6_key vip = {.port = d.dport};

		__builtin_memcpy(vip.addr, d.daddr, 16);
		fv = flows6.lookup(&fk);
		if (!fv && (!d.dport || !vips6.lookup(&vip))) /* port 0: the address entry */
			return REASON_PASS_NOT_OURS;
	}
	cfg = config.lookup(&zero);
	if (!cfg || !cfg->tunnel_addr || !cfg->tunnel_port)
		return REASON_DROP_NO_CONFIG;
	reason = check_udp6(&d, data_end - data - ETH_HDR_LEN);
	if (reason == REASON_CONTINUE)
		reason = trim_frame(ctx, ETH_HDR_LEN + IPV6_HDR_LEN + d.plen);
	if (reason != REASON_CONTINUE)
		return reason;
	return from_client6(ctx, &d, fv, cfg, now, hop);
}

/* The path of an IPv4 packet parsed into *d. */
static __always_inline __u32 relay4(struct xdp_md *ctx, const struct udp4 *d, struct next_hop *hop,
				    __u64 *now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct relay_config *cfg;
	struct flow_val *fv = NULL;
	__u32 zero = 0, reason;
	int tunnel;

	cfg = config.lookup(&zero);
	tunnel = cfg && cfg->tunnel_port && d->daddr == cfg->tunnel_addr &&
		 d->dport == cfg->tunnel_port;
	if (!tunnel) {
		/* The flow first: a flow's VIP is ours (relayctl load deletes the flows of a VIP it
		 * removes), so a flow hit needs no VIP lookup; only a miss asks whether it is ours. */
		struct flow_key fk = flow_key_of(d);
		struct vip_key vip = {.addr = d->daddr, .port = d->dport};

		fv = flow_lookup(&fk, 1, now);
		if (!fv && !vips.lookup(&vip))
			return REASON_PASS_NOT_OURS;
	}
	if (!cfg || !cfg->tunnel_addr || !cfg->tunnel_port)
		return REASON_DROP_NO_CONFIG;

	reason = check_udp4(d, data_end - data - ETH_HDR_LEN);
	if (reason == REASON_CONTINUE)
		reason = trim_frame(ctx, ETH_HDR_LEN + d->tot_len);
	if (reason != REASON_CONTINUE)
		return reason;
	reason = tunnel ? from_tunnel(ctx, d, cfg, now, hop)
			: from_client(ctx, d, fv, cfg, now, hop);
	/* A flow this relay never saw (a failover): the controller's socket on the VIP asks the
	 * registry where it lives. Only when a controller said it listens, else it is a drop. */
	if (reason == REASON_DROP_NO_FLOW && (cfg->flags & CONFIG_F_SLOW_PATH))
		return REASON_PASS_SLOW_PATH;
	return reason;
}

/* The whole path of one packet: its reason, with *same_port set when a forwarded packet leaves
 * by the port it came in on. One FIB tail for both families (each fib_forward inlined once). */
static __always_inline __u32 relay(struct xdp_md *ctx, int *same_port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct next_hop hop = {};
	struct udp4 d = {};
	__u32 reason;
	__u64 now = 0; /* clock_now() */

	reason = parse_udp4(data, data_end, &d);
	if (reason == REASON_CONTINUE)
		reason = relay4(ctx, &d, &hop, &now);
	else if (reason == REASON_PASS_NOT_IPV4)
		reason = relay6(ctx, &hop, &now);
	if (!reason_is_forward(reason))
		return reason;
	if (hop.v6)
		return fib_forward6(ctx, &hop, reason, same_port);
	return fib_forward(ctx, &hop, reason, clock_now(&now), same_port);
}

int xdp_relay(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	int same_port = 0;
	__u32 reason = relay(ctx, &same_port);

	count_packet(reason, bytes);
	return reason_action(reason, same_port);
}
