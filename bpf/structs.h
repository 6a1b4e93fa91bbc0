/* The relay's types: every map key and value (maps.h says which map holds which), and the structs
 * the path steps hand each other. Addresses and ports are network byte order (__be), everything
 * else host order. The map structs are part of the format (docs/wire-format.md §4); Python
 * mirrors them in control/maps.py, and tests/control/test_maps.py checks the layouts agree. */
#ifndef EDGE_STRUCTS_H
#define EDGE_STRUCTS_H

#include "constants.h"

/* ---- pinned maps (the format) ------------------------------------------------------------ */

struct relay_config {
	__be32 tunnel_addr; /* this relay's tunnel address: the source of encapsulated packets */
	__be16 tunnel_port; /* where transceivers send tunnel datagrams; 0: not configured */
	__u16 flags;	    /* CONFIG_F_* */
	/* unix time in ns minus CLOCK_MONOTONIC (bpf_ktime_get_ns) in ns: the program's wall clock,
	 * for the ufrag epoch (§1). Written by relayctl load, refreshed by relayctl run and map
	 * sync. 0: not set, so no ufrag creates a flow (drop_no_config). */
	__u64 wall_offset_ns;
	/* Ingress ifindexes tunnel datagrams are accepted on; 0 ends the list. None: no link. */
	__u32 tunnel_ifindex[MAX_TUNNEL_LINKS];
	__u16 flow_idle_s;	/* 0: FLOW_IDLE_S */
	__u16 ufrag_max_age;	/* epochs; 0: UFRAG_MAX_AGE */
	__u16 ufrag_flow_limit; /* 0: UFRAG_FLOW_LIMIT */
	__u16 ufrag_window_s;	/* 0: UFRAG_WINDOW_S */
};

/* An address:port: a VIP in `vips`, a transceiver's tunnel endpoint in `txr_addrs`. */
struct vip_key {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* An IPv6 VIP address:port in `vips6`. Port 0 is the address alone (relayctl load writes one
 * per VIP6 address): a packet to it whose port the relay does not read (an extension header, a
 * fragment) is ours, and dropped by name rather than passed. */
struct vip6_key {
	__be32 addr[4];
	__be16 port;
	__u16 pad;
};

/* A SipHash-2-4 key (§1): k0 and k1 are its 16 bytes read as two little-endian u64. */
struct routing_key {
	__u64 k0;
	__u64 k1;
	__u32 live; /* 0: no key under this id (a ufrag naming it is drop_unknown_key) */
	__u32 pad;
};

/* A transceiver's identity, as a routing ufrag names it. */
struct txr_key {
	__u16 cluster;
	__u16 pad;
	__u32 id;
};

/* Where a transceiver receives tunnel datagrams. */
struct txr_val {
	__be32 addr;
	__be16 port;
	__u16 flags; /* reserved, 0 */
};

/* A client's 4-tuple toward a VIP (the protocol is always UDP). */
struct flow_key {
	__be32 client_addr;
	__be32 vip_addr;
	__be16 client_port;
	__be16 vip_port;
};

/* An IPv6 client's 4-tuple toward a VIP6 (flows6; the value is struct flow_val). */
struct flow6_key {
	__be32 client_addr[4];
	__be32 vip_addr[4];
	__be16 client_port;
	__be16 vip_port;
};

/* The transceiver a flow goes to: its ids, not its address, so a transceiver that moves keeps
 * its flows and one that leaves the map stops receiving them. */
struct flow_val {
	__u16 cluster;
	__u16 seen; /* coarse time of the flow's last client packet (FLOW_SEEN_SHIFT), mod 2^16 */
	__u32 id;
	__u64 created_ns; /* bpf_ktime_get_ns() when the flow was created or last moved */
	/* The transceiver's tunnel endpoint as last looked up, and the txr_gen it was looked up
	 * under (TXR_CACHE_* in constants.h: one word, so a CPU never sees half of another's
	 * write). 0: none. Written by the program only; the slow path writes 0. */
	__u64 txr_cache;
};

/* One exit reason's tally on one CPU. */
struct counter {
	__u64 packets;
	__u64 bytes; /* frame length as received */
};

/* ---- private maps (not part of the format) ----------------------------------------------- */

/* How many flows one ufrag (keyed by its 48-bit tag) created in the current window. */
struct ufrag_rate {
	__u64 start_ns; /* bpf_ktime_get_coarse_ns() when the window began */
	__u32 count;
	__u32 pad;
};

/* A next-hop cache entry's key: every input of bpf_fib_lookup that the relay varies. */
struct nh_key {
	__be32 daddr;
	__be32 saddr;
	__be16 sport;
	__be16 dport;
	__u32 ifindex; /* ingress */
	__u8 tos;
	__u8 pad[3];
};

/* What the FIB answered for that key. */
struct nh_val {
	__u64 expires_ns; /* bpf_ktime_get_coarse_ns() clock; 0: never filled */
	__u32 ifindex;	  /* egress */
	__u32 epoch;	  /* nh_epoch[0] when filled: a bump invalidates every slot */
	__u16 max_len;	  /* the longest tot_len the FIB accepted for this entry */
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u16 pad;
};

/* One slot of the direct-mapped cache: the key is stored and compared on every hit. */
struct nh_slot {
	struct nh_key key;
	struct nh_val val;
};

/* This CPU's last reading of the coarse clock and the jiffy it was taken in (clock.h). */
struct clock_reading {
	__u64 jiffies; /* bpf_jiffies64() when read; 0: never */
	__u64 ns;      /* bpf_ktime_get_coarse_ns() then */
};

/* One slot of the per-CPU flow copies (flowcopy.h): a copy of an IPv4 flow and what it is
 * valid under. The key is stored and compared on every hit. */
struct flow_copy {
	struct flow_key key;
	__u32 version; /* flow_versions[slot] when copied */
	__u16 gen;     /* txr_gen[0] when copied (0: never filled) */
	__u16 tick;    /* the coarse clock (FLOW_SEEN_SHIFT units) when copied */
	struct flow_val val;
};

/* ---- between the path steps -------------------------------------------------------------- */

/* What ufrag_verify learns from a ufrag besides the transceiver. */
struct ufrag_hint {
	__u64 tag; /* the 48-bit tag: the per-ufrag counters' key */
	__u32 epoch;
	__u32 pad;
};

/* The fields of a client or tunnel datagram, copied out of the packet so that they survive
 * bpf_xdp_adjust_head/tail (which invalidate every packet pointer). */
struct udp4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 tot_len;	/* IPv4 total length, host order */
	__u16 udp_len;	/* UDP length, host order */
	__u16 frag_off; /* host order, flags included */
	__u8 ihl;	/* header length in bytes */
	__u8 tos;
};

/* The IPv6 header, spelled without bitfields or unions (uapi's ipv6hdr has both). */
struct edge_ipv6hdr {
	__be32 vtc_flow; /* version 4 bits, traffic class 8, flow label 20 */
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__be32 saddr[4];
	__be32 daddr[4];
};

/* An IPv6 client datagram's fields, copied out as struct udp4's are. */
struct udp6 {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u16 plen;    /* IPv6 payload length, host order */
	__u16 udp_len; /* host order */
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 tclass;
	__u8 pad;
};

/* The packet that now follows the Ethernet header at ctx, as the FIB sees it: IPv4/UDP, or
 * with v6 set an IPv6/UDP one (a decapsulated reply to an IPv6 client: saddr6/daddr6). */
struct next_hop {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 tot_len; /* host order: the helper checks it against the route MTU */
	__u8 tos;
	__u8 v6;
	__be32 saddr6[4];
	__be32 daddr6[4];
};

#endif
