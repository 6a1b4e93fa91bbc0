/* Per-CPU packet and byte counters, one slot per exit reason (reasons.h; spec §5). */
#ifndef EDGE_COUNTERS_H
#define EDGE_COUNTERS_H

#include "maps.h"
#include "reasons.h"
#include "structs.h"

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
