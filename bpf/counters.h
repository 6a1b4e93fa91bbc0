/* Per-CPU packet and byte counters, one slot per exit reason (spec §5: the numbers are the format). */
#ifndef EDGE_COUNTERS_H
#define EDGE_COUNTERS_H

#include "maps.h"
#include "structs.h"

enum reason {
	REASON_PASS_NOT_IPV4 = 0,
	REASON_PASS_NOT_OURS = 1,
	REASON_FWD_FLOW = 2,
	REASON_FWD_STUN_NEW = 3,
	REASON_FWD_STUN_KNOWN = 4,
	REASON_FWD_DECAP = 5,
	REASON_DROP_TRUNCATED = 6,
	REASON_DROP_IP_OPTIONS = 7,
	REASON_DROP_FRAGMENT = 8,
	REASON_DROP_BAD_UDP_LEN = 9,
	REASON_DROP_NO_FLOW = 10,
	REASON_DROP_BAD_COOKIE = 11,
	REASON_DROP_NO_USERNAME = 12,
	REASON_DROP_BAD_UFRAG = 13,
	REASON_DROP_UNKNOWN_KEY = 14,
	REASON_DROP_BAD_TAG = 15,
	REASON_DROP_UNKNOWN_TXR = 16,
	REASON_DROP_TUNNEL_STRANGER = 17,
	REASON_DROP_TUNNEL_BAD_INNER = 18,
	REASON_DROP_TUNNEL_FOREIGN_SRC = 19,
	REASON_DROP_FIB = 20,
	REASON_PASS_FIB_NO_NEIGH = 21,
	REASON_DROP_TOO_BIG = 22,
	REASON_DROP_ENCAP = 23,
	REASON_DROP_NO_CONFIG = 24,
	REASON_DROP_REDIRECT = 25,
	REASON_PASS_SLOW_PATH = 26,
	REASON_MAX = 27,
};

/* A verdict carries the reason to count and the XDP action to return, so that the entry point
 * counts in exactly one place and every exit path counts exactly one reason. */
typedef __u32 verdict_t;
#define VERDICT(reason, action) ((verdict_t)(((reason) << 8) | (action)))
#define VERDICT_REASON(v) ((v) >> 8)
#define VERDICT_ACTION(v) ((v)&0xff)
#define PASS(reason) VERDICT(reason, XDP_PASS)
#define DROP(reason) VERDICT(reason, XDP_DROP)

static __always_inline void count_packet(__u32 reason, __u64 bytes)
{
	struct counter *c = counters.lookup(&reason);

	if (c) { /* per-CPU slot: no atomics needed */
		c->packets++;
		c->bytes += bytes;
	}
}

#endif
