/* The program's clock: the coarse monotonic clock, read at most once per packet.
 *
 * Why a per-CPU reading: bpf_ktime_get_coarse_ns() is a helper call, about 13-15 ns of a
 * forwarded packet here (bench.bpf_breakdown; calls return through the SRSO thunk on this
 * machine), while bpf_jiffies64() is inlined by the verifier (one load). The coarse clock only
 * moves when the tick updates the timekeeper, which is also when jiffies moves, so a reading
 * taken in the current jiffy is the value the helper would return again: each CPU calls the
 * helper once per jiffy and answers the rest of its packets from clock_readings.
 *
 * Trade-off: the tick advances jiffies just before it updates the timekeeper, so a reading taken
 * in that window is the previous tick's time and is kept for the whole new jiffy: the clock can
 * lag the coarse clock by one tick more (1-10 ms by CONFIG_HZ). Everything that reads it counts
 * in far coarser units (seen and the copies' tick ~1.07 s, the next-hop expiry 250 ms, ufrag
 * epochs). It never runs backwards: a CPU's readings only ever grow. */
#ifndef EDGE_CLOCK_H
#define EDGE_CLOCK_H

#include "constants.h"
#include "maps.h"
#include "structs.h"

/* The coarse clock: this CPU's reading if it was taken in the current jiffy, else a new one. */
static __always_inline __u64 coarse_ns(void)
{
	__u64 jiffies = bpf_jiffies64();
	__u32 zero = 0;
	struct clock_reading *r = clock_readings.lookup(&zero);

	if (!r)
		return bpf_ktime_get_coarse_ns();
	if (r->jiffies != jiffies) {
		r->ns = bpf_ktime_get_coarse_ns();
		r->jiffies = jiffies;
	}
	return r->ns;
}

/* The coarse clock, read once per packet and only by the paths that need it (the drops before
 * a flow or a FIB lookup do not read it): *now is 0 until the first read. */
static __always_inline __u64 clock_now(__u64 *now)
{
	if (!*now)
		*now = coarse_ns();
	return *now;
}

/* The coarse clock as flow_val.seen counts it (and the flow copies' tick). */
static __always_inline __u16 seen_of(__u64 now)
{
	return (__u16)(now >> FLOW_SEEN_SHIFT);
}

#endif
