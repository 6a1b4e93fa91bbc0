/* Ethernet header writes. */
#ifndef EDGE_ETH_H
#define EDGE_ETH_H

#include "constants.h"

/* Copies one MAC address (6 bytes) as three 16-bit moves. Why not memcpy: the uapi ethhdr is
 * packed, so clang assumes byte alignment and copies byte by byte (twice the instructions, on
 * every forwarded packet). Every MAC the relay copies starts on an even offset (in a frame, a
 * map value, struct bpf_fib_lookup on the stack, where the verifier checks alignment), so
 * 16-bit accesses are aligned wherever they run. */
static __always_inline void mac_copy(void *dst, const void *src)
{
	__u16 *d = dst;
	const __u16 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

#endif
