/* Per-CPU packet and byte counters, one slot per exit reason (reasons.h; spec §5). */
#ifndef EDGE_COUNTERS_H
#define EDGE_COUNTERS_H

#include "maps.h"
#include "reasons.h"
#include "structs.h"

/* Counts one packet of `bytes` under reason; only the entry point calls it, once per packet. */
static __always_inline void count_packet(__u32 reason, __u64 bytes)
{
	struct counter *c = counters.lookup(&reason);

	if (c) { /* per-CPU slot: no atomics needed */
		c->packets++;
		c->bytes += bytes;
	}
}

#endif
