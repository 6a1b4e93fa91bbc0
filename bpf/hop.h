/* The relay as a router hop: TTL, and the destinations no packet of ours may go to. */
#ifndef EDGE_HOP_H
#define EDGE_HOP_H

#include "constants.h"
#include "reasons.h"

/* One hop less, with the header checksum updated incrementally (RFC 1624, as the kernel's
 * ip_decrease_ttl): the TTL is the high byte of its 16-bit word. The caller has checked
 * ttl > 1. */
static __always_inline void ipv4_decrement_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check;

	check += (__u32)edge_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xffff));
	ip->ttl--;
}

/* REASON_CONTINUE for a unicast address a client can have, else the class it belongs to:
 * multicast 224/4, the limited broadcast, loopback 127/8, and reserved: 0/8 ("this network"),
 * class E 240/4 and link-local 169.254/16 (RFC 3927: routers never forward it). */
static __always_inline __u32 addr_class(__be32 addr)
{
	__u32 a = edge_ntohl(addr);

	if ((a >> 28) == 0xe)
		return REASON_DROP_DECAP_MULTICAST;
	if (a == 0xffffffffU)
		return REASON_DROP_DECAP_BROADCAST;
	if ((a >> 24) == 127)
		return REASON_DROP_DECAP_LOOPBACK;
	if ((a >> 24) == 0 || (a >> 28) == 0xf || (a >> 16) == 0xa9fe)
		return REASON_DROP_DECAP_RESERVED;
	return REASON_CONTINUE;
}

#endif
