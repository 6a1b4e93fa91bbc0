/* Per-CPU flow copies: IPv4 flow lookups without a hash map call.
 *
 * Why: the `flows` lookup is a call into the kernel's LRU hash code (hash, bucket walk, memcmp:
 * four calls and returns) on every forwarded packet, both ways, the largest single piece of a
 * flow hit. In front of it sits a direct-mapped per-CPU array (map `flow_copies`, maps.h), whose
 * lookup the verifier inlines: a slot holds a copy of one flow, its key compared on every hit.
 *
 * When a copy may be used instead of the flow. Every writer of `flows` makes the copies it could
 * leave stale fail one of these checks, and each check's value is read before the `flows`
 * lookup that fills a copy, so a copy filled before a write is never used after it:
 *  - the slot's tag (flow_copy_tags, this CPU) is the key's hash | 1: a filter only, the key
 *    itself is compared too;
 *  - version == flow_versions[slot]: the program bumps it right after it creates or moves a flow
 *    of that slot (route_stun), on one shared array, so a copy on any CPU goes stale at once;
 *  - gen == txr_gen[0] (not 0): the controller bumps txr_gen after it deletes or writes flows
 *    (a VIP removed), as after a transceiver change; 0 (unset) means no copies;
 *  - tick == the coarse clock's FLOW_SEEN_SHIFT unit: a copy lives at most one unit (~1.07 s),
 *    which bounds what no check covers: a flow the LRU evicted (its copies forward it for the
 *    rest of the unit, as if the eviction came that much later) and a flow the slow path
 *    installed where a copy was left by one evicted within the unit;
 *  - for a client packet, also val.seen == tick: that packet's `seen` refresh (once per unit)
 *    goes to `flows` itself, never to a copy, so the controller and the idle rule see it.
 * A miss looks `flows` up and copies what it found into the slot. Writes through the pointer
 * returned (txr_cache; seen only when it differs, which a valid client copy never does) stay in
 * the copy or the flow: both are valid as the rules above stand.
 *
 * Only this CPU's program writes its slots (XDP does not nest on a CPU), so no locking is
 * needed and no copy is ever half written. IPv6 flows (`flows6`) have no copies. */
#ifndef EDGE_FLOWCOPY_H
#define EDGE_FLOWCOPY_H

#include "clock.h"
#include "constants.h"
#include "maps.h"
#include "structs.h"

/* A key's 32-bit hash: a multiplicative hash (tests/bpf/bpfharness.py computes it too). Its top
 * bits are the slot, the whole of it (bit 0 set, so never 0) the slot's tag. A chosen collision
 * only costs its victim the `flows` lookup. */
static __always_inline __u32 flow_copy_hash(const struct flow_key *k)
{
	__u32 x = k->client_addr ^ (((__u32)k->client_port << 16) | k->vip_port);

	x ^= k->vip_addr * 0x85ebca6bU;
	return x * 0x9e3779b1U;
}

static __always_inline __u32 flow_copy_slot_of(const struct flow_key *k)
{
	return flow_copy_hash(k) >> (32 - FLOW_COPY_BITS);
}

static __always_inline int flow_key_eq(const struct flow_key *a, const struct flow_key *b)
{
	return a->client_addr == b->client_addr && a->vip_addr == b->vip_addr &&
	       a->client_port == b->client_port && a->vip_port == b->vip_port;
}

/* fk's flow, or NULL: a valid copy from this CPU's slot, else `flows` (then copied). `client`
 * (a constant at each call): the lookup of a client packet, which refreshes `seen`.
 *
 * Why the tags: a flood of datagrams from random sources (no flow) would otherwise read a
 * random 48-byte slot of the 768 KiB array per packet, a cache and TLB miss each; the 64 KiB of
 * tags stay in L2, and only a slot whose tag matches is read. Measured, a no-flow drop with a
 * new client port per packet (median of single runs): 240-250 ns without copies, 260-395 with
 * them, tags or not: the spread between runs is larger than what the tags change, so they rest
 * on the argument, not on a measured gain. */
static __always_inline struct flow_val *flow_lookup(struct flow_key *fk, int client,
						    __u64 *clock)
{
	__u32 zero = 0, hash = flow_copy_hash(fk), tag = hash | 1;
	__u32 slot = hash >> (32 - FLOW_COPY_BITS);
	__u32 *tagp = flow_copy_tags.lookup(&slot);
	__u32 *versionp = flow_versions.lookup(&slot);
	__u32 *genp = txr_gen.lookup(&zero);
	struct flow_copy *c;
	struct flow_val *fv;
	__u32 version;
	__u16 gen, tick;

	if (!tagp || !versionp || !genp)
		return flows.lookup(fk);
	version = *(volatile __u32 *)versionp;
	gen = (__u16)*(volatile __u32 *)genp;
	if (*tagp == tag && gen) {
		/* looked up only here: even a per-CPU array lookup reads its pointer table */
		c = flow_copies.lookup(&slot);
		if (c && c->gen == gen && c->version == version && flow_key_eq(&c->key, fk)) {
			/* the clock only for a matching slot: traffic not ours never reads it */
			tick = seen_of(clock_now(clock));
			if (c->tick == tick && (!client || c->val.seen == tick))
				return &c->val;
		}
	}
	fv = flows.lookup(fk);
	if (fv && gen) {
		c = flow_copies.lookup(&slot);
		if (c) {
			c->key = *fk;
			c->version = version;
			c->gen = gen;
			c->tick = seen_of(clock_now(clock));
			c->val = *fv;
			*tagp = tag;
		}
	}
	return fv;
}

/* After the program wrote fk's flow in `flows`: every CPU's copy of it is stale from now on. */
static __always_inline void flow_written(const struct flow_key *fk)
{
	__u32 slot = flow_copy_slot_of(fk);
	__u32 *versionp = flow_versions.lookup(&slot);

	if (versionp)
		__sync_fetch_and_add(versionp, 1);
}

#endif
