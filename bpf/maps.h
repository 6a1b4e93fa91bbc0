/* The relay's maps (spec §4). Addresses and ports are network byte order, ids host order.
 * With PIN_DIR defined (a string literal), every map is pinned at PIN_DIR/<name>: a recompiled
 * program then reuses the pinned maps, so flows and configuration survive a reload. */
#ifndef EDGE_MAPS_H
#define EDGE_MAPS_H

#include "constants.h"

struct relay_config {
	__be32 tunnel_addr;
	__be16 tunnel_port;
	__u16 flags;
};

struct vip_key {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct routing_key {
	__u64 k0;
	__u64 k1;
	__u32 live;
	__u32 pad;
};

struct txr_key {
	__u16 cluster;
	__u16 pad;
	__u32 id;
};

struct txr_val {
	__be32 addr;
	__be16 port;
	__u16 flags;
};

struct flow_key {
	__be32 client_addr;
	__be32 vip_addr;
	__be16 client_port;
	__be16 vip_port;
};

struct flow_val {
	__u16 cluster;
	__u16 pad;
	__u32 id;
	__u64 created_ns;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

#ifdef PIN_DIR
#define EDGE_MAP(type, key, val, name, size) \
	BPF_TABLE_PINNED(type, key, val, name, size, PIN_DIR "/" #name)
#else
#define EDGE_MAP(type, key, val, name, size) BPF_TABLE(type, key, val, name, size)
#endif

EDGE_MAP("array", __u32, struct relay_config, config, 1);
EDGE_MAP("hash", struct vip_key, __u32, vips, MAX_VIPS);
EDGE_MAP("array", __u32, struct routing_key, keys, NUM_KEYS);
EDGE_MAP("hash", struct txr_key, struct txr_val, transceivers, MAX_TRANSCEIVERS);
EDGE_MAP("hash", struct vip_key, __u32, txr_addrs, MAX_TRANSCEIVERS);
EDGE_MAP("lru_hash", struct flow_key, struct flow_val, flows, MAX_FLOWS);
EDGE_MAP("percpu_array", __u32, struct counter, counters, COUNTER_SLOTS);

#endif
