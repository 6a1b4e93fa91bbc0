/* The relay as a router hop: TTL, and the destinations no packet of ours may go to. */
#ifndef EDGE_HOP_H
#define EDGE_HOP_H

#include "constants.h"
#include "reasons.h"

/* Whether a 20-byte IPv4 header's checksum verifies: the same one's-complement sum as
 * ipv4_csum_fold (parse.h), read as five 32-bit words (half the loads and adds, on every client
 * packet; the sum of 16-bit halves folds to the same 16 bits). */
static __always_inline int ipv4_csum_ok(const struct iphdr *ip)
{
	const __u32 *w = (const __u32 *)ip;
	__u64 sum = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];

	sum = (sum & 0xffffffffULL) + (sum >> 32);
	sum = (sum & 0xffffffffULL) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

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
	__u32 a = edge_ntohl(addr), top = a >> 24;

	/* the common case in three compares: 1..126 and 128..223, not 169.254 */
	if (top - 1 < 223 && top != 127 && (a >> 16) != 0xa9fe)
		return REASON_CONTINUE;
	if (top >= 224 && top < 240)
		return REASON_DROP_DECAP_MULTICAST;
	if (a == 0xffffffffU)
		return REASON_DROP_DECAP_BROADCAST;
	if (top == 127)
		return REASON_DROP_DECAP_LOOPBACK;
	return REASON_DROP_DECAP_RESERVED; /* 0/8, 240/4, 169.254/16 */
}

#endif
