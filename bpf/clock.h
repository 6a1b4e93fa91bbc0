/* The program's clock: the coarse monotonic clock, read at most once per packet. */
#ifndef EDGE_CLOCK_H
#define EDGE_CLOCK_H

#include "constants.h"

/* The coarse clock, read once per packet and only by the paths that need it (the drops before
 * a flow or a FIB lookup do not pay the helper call): *now is 0 until the first read. */
static __always_inline __u64 clock_now(__u64 *now)
{
	if (!*now)
		*now = bpf_ktime_get_coarse_ns();
	return *now;
}

/* The coarse clock as flow_val.seen counts it (and the flow copies' tick). */
static __always_inline __u16 seen_of(__u64 now)
{
	return (__u16)(now >> FLOW_SEEN_SHIFT);
}

#endif
