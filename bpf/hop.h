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

/* The IPv6 twin of addr_class: REASON_CONTINUE for an address a client can have, else
 * multicast ff00::/8, loopback ::1, or reserved: unspecified ::, link-local fe80::/10 (never
 * forwarded) and IPv4-mapped ::ffff:0:0/96 (an IPv4 address in disguise: never on the wire). */
static __always_inline __u32 addr6_class(const __be32 *a)
{
	__u32 w0 = edge_ntohl(a[0]);

	/* the common case: a global or unique-local address (first word not 0, not fe80/10, ff) */
	if (w0 && (w0 >> 24) != 0xff && (w0 >> 22) != (0xfe80U >> 6))
		return REASON_CONTINUE;
	if ((w0 >> 24) == 0xff)
		return REASON_DROP_DECAP_MULTICAST;
	if (w0)
		return REASON_DROP_DECAP_RESERVED; /* fe80::/10 */
	if (a[1] == 0 && a[2] == 0 && a[3] == edge_htonl(1))
		return REASON_DROP_DECAP_LOOPBACK;
	if (a[1] == 0 && a[2] == 0 && a[3] == 0)
		return REASON_DROP_DECAP_RESERVED;
	if (a[1] == 0 && a[2] == edge_htonl(0xffff))
		return REASON_DROP_DECAP_RESERVED;
	return REASON_CONTINUE; /* 0::/8 otherwise: not special here */
}

static __always_inline int addr6_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

#endif
