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
#include "reasons.h"
#include "counters.h"
#include "parse.h"
#include "stun.h"
#include "siphash.h"
#include "ufrag.h"
#include "encap.h"
#include "fib.h"

/* fib_forward and the encapsulation are each inlined once: copies would blow the 512-byte
 * stack. */

/* What a flow hit counts as. A -D hook for tests/bpf/test_bpf_reasons.py, which adds a reason
 * past the last one (EDGE_EXTRA_REASONS) and proves that its kind, not its number, decides what
 * the program does with the packet. */
#ifndef EDGE_FLOW_HIT_REASON
#define EDGE_FLOW_HIT_REASON REASON_FWD_FLOW
#endif

/* A STUN Binding request: route by ufrag, and create or move the flow only when it changes. */
static __always_inline __u32 route_stun(struct xdp_md *ctx, struct flow_key *fk, __u32 msg_end,
					struct txr_val *out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *pl = data + PAYLOAD_OFF;
	struct txr_key tk = {};
	struct txr_val *txr;
	struct flow_val *fv;
	__u32 off = 0, len = 0, reason;

	reason = stun_find_username(pl, data_end, msg_end, &off, &len);
	if (reason != REASON_CONTINUE)
		return reason;
	reason = ufrag_verify(pl, data_end, off, len, &tk);
	if (reason != REASON_CONTINUE)
		return reason;
	txr = transceivers.lookup(&tk);
	if (!txr)
		return REASON_DROP_UNKNOWN_TXR;
	*out = *txr;

	reason = REASON_FWD_STUN_KNOWN;
	fv = flows.lookup(fk);
	if (!fv || fv->cluster != tk.cluster || fv->id != tk.id) {
		struct flow_val nv = {
			.cluster = tk.cluster,
			.id = tk.id,
			.created_ns = bpf_ktime_get_ns(),
		};

		flows.update(fk, &nv);
		reason = REASON_FWD_STUN_NEW;
	}
	return reason;
}

/* Which transceiver gets a client datagram: by ufrag for a Binding request, else by flow. */
static __always_inline __u32 pick_transceiver(struct xdp_md *ctx, const struct udp4 *d,
					      struct txr_val *out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 plen = d->udp_len - UDP_HDR_LEN;
	struct flow_key fk = {
		.client_addr = d->saddr,
		.vip_addr = d->daddr,
		.client_port = d->sport,
		.vip_port = d->dport,
	};
	struct txr_key tk = {};
	struct txr_val *txr;
	struct flow_val *fv;

	if (plen) {
		__u32 binding_end = 0;
		__u32 reason = stun_classify(data + PAYLOAD_OFF, data_end, plen, &binding_end);

		if (reason != REASON_CONTINUE)
			return reason;
		if (binding_end)
			return route_stun(ctx, &fk, binding_end, out);
	}

	fv = flows.lookup(&fk);
	if (!fv)
		return REASON_DROP_NO_FLOW;
	tk.cluster = fv->cluster;
	tk.id = fv->id;
	txr = transceivers.lookup(&tk);
	if (!txr) /* the transceiver left the map: its calls stop at once */
		return REASON_DROP_UNKNOWN_TXR;
	*out = *txr;
	return EDGE_FLOW_HIT_REASON;
}

/* A datagram from a client to one of our VIPs: into the tunnel to its transceiver. */
static __always_inline __u32 from_client(struct xdp_md *ctx, const struct udp4 *d,
					 const struct relay_config *cfg, struct next_hop *hop)
{
	struct txr_val txr = {};
	__u32 reason = pick_transceiver(ctx, d, &txr), step;

	if (!reason_is_forward(reason))
		return reason;
	hop->saddr = cfg->tunnel_addr;
	hop->daddr = txr.addr;
	hop->sport = flow_entropy(d->saddr, d->sport, d->dport);
	hop->dport = txr.port;
	hop->tos = d->tos;
	hop->tot_len = d->tot_len + ENCAP_LEN;
	step = encap_udp4(ctx, d, hop->saddr, hop->daddr, hop->sport, hop->dport);
	return step == REASON_CONTINUE ? reason : step;
}

/* A tunnel datagram: a registered transceiver's reply, from one of our VIPs, toward a client. */
static __always_inline __u32 from_tunnel(struct xdp_md *ctx, const struct udp4 *d,
					 struct next_hop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct vip_key peer = {.addr = d->saddr, .port = d->sport};
	struct iphdr *ip = data + PAYLOAD_OFF;
	struct udphdr *udp = data + PAYLOAD_OFF + IPV4_HDR_LEN;
	struct vip_key src = {};
	__u32 step;

	if (!txr_addrs.lookup(&peer))
		return REASON_DROP_TUNNEL_STRANGER;
	step = check_inner_udp4(ip, data_end, d->udp_len - UDP_HDR_LEN);
	if (step != REASON_CONTINUE)
		return step;
	src.addr = hop->saddr = ip->saddr;
	src.port = hop->sport = udp->source;
	if (!vips.lookup(&src))
		return REASON_DROP_TUNNEL_FOREIGN_SRC;
	hop->daddr = ip->daddr;
	hop->dport = udp->dest;
	hop->tos = ip->tos;
	hop->tot_len = edge_ntohs(ip->tot_len);
	step = decap_udp4(ctx);
	return step == REASON_CONTINUE ? REASON_FWD_DECAP : step;
}

/* The whole path of one packet: its reason, with *same_port set when a forwarded packet leaves
 * by the port it came in on. */
static __always_inline __u32 relay(struct xdp_md *ctx, int *same_port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct relay_config *cfg;
	struct next_hop hop = {};
	struct udp4 d = {};
	__u32 zero = 0, reason;
	int tunnel;

	reason = parse_udp4(data, data_end, &d);
	if (reason != REASON_CONTINUE)
		return reason;

	cfg = config.lookup(&zero);
	tunnel = cfg && cfg->tunnel_port && d.daddr == cfg->tunnel_addr &&
		 d.dport == cfg->tunnel_port;
	if (!tunnel) {
		struct vip_key vip = {.addr = d.daddr, .port = d.dport};

		if (!vips.lookup(&vip))
			return REASON_PASS_NOT_OURS;
	}
	if (!cfg || !cfg->tunnel_addr || !cfg->tunnel_port)
		return REASON_DROP_NO_CONFIG;

	reason = check_udp4(&d, data_end - data - ETH_HDR_LEN);
	if (reason == REASON_CONTINUE)
		reason = trim_frame(ctx, ETH_HDR_LEN + d.tot_len);
	if (reason != REASON_CONTINUE)
		return reason;
	reason = tunnel ? from_tunnel(ctx, &d, &hop) : from_client(ctx, &d, cfg, &hop);
	/* A flow this relay never saw (a failover): the controller's socket on the VIP asks the
	 * registry where it lives. Only when a controller said it listens, else it is a drop. */
	if (reason == REASON_DROP_NO_FLOW && (cfg->flags & CONFIG_F_SLOW_PATH))
		return REASON_PASS_SLOW_PATH;
	if (!reason_is_forward(reason))
		return reason;
	return fib_forward(ctx, &hop, reason, same_port);
}

int xdp_relay(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	int same_port = 0;
	__u32 reason = relay(ctx, &same_port);

	count_packet(reason, bytes);
	return reason_action(reason, same_port);
}
