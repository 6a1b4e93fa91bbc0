/* Every map of the relay (docs/wire-format.md §4), with what its key and value mean, who writes
 * it and who reads it. The structs are in structs.h, the sizes in constants.h.
 *
 * The eight maps of the format are pinned when PIN_DIR is defined (a string literal; relayctl
 * load passes /sys/fs/bpf/<name>): each lives at PIN_DIR/<map name>, and a recompiled program
 * reuses them, so flows and configuration survive a reload. control/program.py lists them
 * (MAP_NAMES). The next-hop cache maps are private to one loaded program and never pinned. */
#ifndef EDGE_MAPS_H
#define EDGE_MAPS_H

#include "constants.h"
#include "structs.h"

#ifdef PIN_DIR
#define EDGE_MAP(type, key, val, name, size) \
	BPF_TABLE_PINNED(type, key, val, name, size, PIN_DIR "/" #name)
#else
#define EDGE_MAP(type, key, val, name, size) BPF_TABLE(type, key, val, name, size)
#endif

/* config[0]: the relay's own tunnel endpoint and flags. Written by relayctl load (tunnel
 * address:port, flags 0) and relayctl run (sets CONFIG_F_SLOW_PATH while its VIP sockets are
 * bound, clears it on exit). Read by the program on every packet: no entry or a zero tunnel
 * address or port means not configured (drop_no_config for VIP and tunnel traffic). Pinned. */
EDGE_MAP("array", __u32, struct relay_config, config, 1);

/* vips: key a VIP address:port this relay answers for; value its index in relayctl load's
 * --vip list (informational, the program does not read it). Written by relayctl load. Read by
 * the program: a client datagram is ours only if its destination is here, and a tunnel
 * datagram's inner source must be here (else drop_tunnel_foreign_src). Pinned. */
EDGE_MAP("hash", struct vip_key, __u32, vips, MAX_VIPS);

/* keys: key a routing key id (0..15, the ufrag's 4-bit key id); value the SipHash key, live 1
 * (a removed key is all zeros). Written by relayctl map sync / run from the registry. Read by
 * the program to verify a STUN Binding request's ufrag tag (ufrag.h). Pinned. */
EDGE_MAP("array", __u32, struct routing_key, keys, NUM_KEYS);

/* transceivers: key a transceiver's (cluster, id); value its tunnel address:port. Written by
 * relayctl map sync / run from the registry. Read by the program for every client datagram it
 * forwards: a ufrag or a flow names the ids, this map gives the address (a missing entry is
 * drop_unknown_txr). Pinned. */
EDGE_MAP("hash", struct txr_key, struct txr_val, transceivers, MAX_TRANSCEIVERS);

/* clusters: key a cluster id (u32, the ufrag's 16-bit cluster); value CLUSTER_LOCAL or
 * CLUSTER_REMOTE (served over the backbone, docs/fleet.md). Written by relayctl map sync / run:
 * every cluster with a transceiver in `transceivers` or a cluster record in the registry. Read by
 * the program only when a Binding request names a transceiver not in `transceivers`, to tell
 * drop_unknown_cluster (a cluster this relay does not serve) from drop_unknown_txr. Pinned. */
EDGE_MAP("hash", __u32, __u32, clusters, MAX_CLUSTERS);

/* txr_addrs: key a transceiver tunnel address:port; value how many transceiver ids are
 * registered there (> 0). Written by relayctl map sync / run together with `transceivers`. Read
 * by the program: a tunnel datagram is accepted only from a key here (else
 * drop_tunnel_stranger). Pinned. */
EDGE_MAP("hash", struct vip_key, __u32, txr_addrs, MAX_TRANSCEIVERS);

/* flows: key a client's (address, port) -> (VIP address, port); value the transceiver it goes
 * to. Written by the program when a STUN Binding request creates or moves a flow (route_stun in
 * relay.c), and by relayctl run's slow path when the registry knows a flow this relay never saw
 * (never overwriting, BPF_NOEXIST). Read by the program for every client datagram that is not a
 * Binding request, and by relayctl run (exports them to the registry) and relayctl flows. LRU:
 * the least recently used flow makes room. Pinned. */
EDGE_MAP("lru_hash", struct flow_key, struct flow_val, flows, MAX_FLOWS);

/* txr_gen[0]: the transceivers map's generation, 1..65535 (0: unset, so no flow uses its cached
 * endpoint). Written by relayctl load (1 when unset) and relayctl map sync / run, which give it a
 * new value right after every sync that removed or changed a transceiver: a flow's cached
 * endpoint (flow_val.txr_cache) is used only under the generation it was looked up in. Read by
 * the program on every flow hit and decap. Pinned. */
EDGE_MAP("array", __u32, __u32, txr_gen, 1);

/* vips6: key an IPv6 VIP address:port (and, port 0, each VIP6 address alone); value its index in
 * relayctl load's --vip list. Written by relayctl load. Read by the program as `vips` is, for
 * IPv6 client traffic and IPv6 tunnel inner sources. Pinned. */
EDGE_MAP("hash", struct vip6_key, __u32, vips6, 2 * MAX_VIPS);

/* flows6: key an IPv6 client's (address, port) -> (VIP6 address, port); value the transceiver it
 * goes to (struct flow_val: the same rules as `flows`, txr_cache included). Written by the
 * program (route_stun); the slow path is IPv4-only and writes none. Read by the program, relayctl
 * run (exports) and relayctl flows. LRU. Pinned. */
EDGE_MAP("lru_hash", struct flow6_key, struct flow_val, flows6, MAX_FLOWS);

/* counters: key an exit reason (reasons.h, §5); value per CPU the packets and bytes counted
 * under it. Written by the program only, once per packet (count_packet in counters.h). Read by
 * relayctl stats and relayctl run's metrics, which sum the CPUs. COUNTER_SLOTS > the number of
 * reasons, so a newer build's reasons fit a map pinned by an older one. Pinned. */
EDGE_MAP("percpu_array", __u32, struct counter, counters, COUNTER_SLOTS);

/* ufrag_rates: key a ufrag's 48-bit tag; value how many flows it created or moved since the
 * start of its window (struct ufrag_rate). Written and read by the program only (route_stun in
 * relay.c), for Binding requests that would create or move a flow. LRU: an attacker needs one
 * valid ufrag per entry to push a count out. Not pinned: a reload starts every count at 0. */
BPF_TABLE("lru_hash", __u64, struct ufrag_rate, ufrag_rates, UFRAG_RATE_SLOTS);

/* nexthops: key a slot number, nh_slot_of() of an nh_key (a direct-mapped cache); value the
 * key it holds and what bpf_fib_lookup answered for it. Written and read by the program only,
 * each CPU its own copy (fib.h explains the cache and its trade-off). Not pinned: each loaded
 * program starts with an empty cache. */
BPF_TABLE("percpu_array", __u32, struct nh_slot, nexthops, NH_CACHE_SLOTS);

/* nh_epoch[0]: the cache's generation. Read by the program on every forwarded packet: a slot
 * filled under another value is a miss. Written by whoever wants every cached answer dropped at
 * once (an operator with bpftool, the tests); the program never writes it. Not pinned. */
BPF_TABLE("array", __u32, __u32, nh_epoch, 1);

/* clock_readings[0]: this CPU's last reading of the coarse clock and the jiffy it was taken in
 * (clock.h: the helper is called once per jiffy, not per packet). Written and read by the
 * program only, each CPU its own. Not pinned. */
BPF_TABLE("percpu_array", __u32, struct clock_reading, clock_readings, 1);

/* flow_copies: key a slot number, flow_copy_slot_of() of a flow_key (direct-mapped); value a
 * copy of an IPv4 flow and what it was copied under. Written and read by the program only, each
 * CPU its own copy (flowcopy.h explains when a copy is valid). Not pinned: each loaded program
 * starts with no copies. */
BPF_TABLE("percpu_array", __u32, struct flow_copy, flow_copies, FLOW_COPY_SLOTS);

/* flow_copy_tags: key a slot number; value the tag (flow_copy_hash() | 1) of the flow copied in
 * that slot of flow_copies on this CPU, 0: none. Written and read by the program only, each CPU
 * its own: only a slot whose tag matches is read (flowcopy.h says why). Not pinned. */
BPF_TABLE("percpu_array", __u32, __u32, flow_copy_tags, FLOW_COPY_SLOTS);

/* flow_versions: key a slot number; value how many times the program created or moved a flow
 * of that slot (mod 2^32). Written by the program right after it writes `flows` (route_stun),
 * read with every flow_lookup: a copy made under another version is stale, on every CPU.
 * Not pinned (the cache it guards is not). */
BPF_TABLE("array", __u32, __u32, flow_versions, FLOW_COPY_SLOTS);

#endif
