/* The relay's exit reasons (docs/wire-format.md §5): one list, from which the enum, the count and
 * the kind of every reason are generated. control/reasons.py is the Python mirror, and
 * tests/bpf/test_bpf_reasons.py checks that the two, and the spec's table, agree.
 *
 * A reason's number is its counter slot: the numbers are the format, so a reason is never
 * renumbered or reused, and a new one takes the next free number (below COUNTER_SLOTS). Its kind,
 * not its number, says what becomes of the packet:
 *   FWD   forwarded: encapsulated or decapsulated, then XDP_TX or XDP_REDIRECT (fib.h)
 *   PASS  handed to the kernel untouched or as rewritten so far: XDP_PASS
 *   DROP  XDP_DROP
 * Names start with their kind in lower case (fwd_, pass_, drop_); the test checks that too. */
#ifndef EDGE_REASONS_H
#define EDGE_REASONS_H

#include "constants.h"

/* X(name, number, kind) */
#define EDGE_REASONS(X)                         \
	X(PASS_NOT_IPV4, 0, PASS)               \
	X(PASS_NOT_OURS, 1, PASS)               \
	X(FWD_FLOW, 2, FWD)                     \
	X(FWD_STUN_NEW, 3, FWD)                 \
	X(FWD_STUN_KNOWN, 4, FWD)               \
	X(FWD_DECAP, 5, FWD)                    \
	X(DROP_TRUNCATED, 6, DROP)              \
	X(DROP_IP_OPTIONS, 7, DROP)             \
	X(DROP_FRAGMENT, 8, DROP)               \
	X(DROP_BAD_UDP_LEN, 9, DROP)            \
	X(DROP_NO_FLOW, 10, DROP)               \
	X(DROP_BAD_COOKIE, 11, DROP)            \
	X(DROP_NO_USERNAME, 12, DROP)           \
	X(DROP_BAD_UFRAG, 13, DROP)             \
	X(DROP_UNKNOWN_KEY, 14, DROP)           \
	X(DROP_BAD_TAG, 15, DROP)               \
	X(DROP_UNKNOWN_TXR, 16, DROP)           \
	X(DROP_TUNNEL_STRANGER, 17, DROP)       \
	X(DROP_TUNNEL_BAD_INNER, 18, DROP)      \
	X(DROP_TUNNEL_FOREIGN_SRC, 19, DROP)    \
	X(DROP_FIB, 20, DROP)                   \
	X(PASS_FIB_NO_NEIGH, 21, PASS)          \
	X(DROP_TOO_BIG, 22, DROP)               \
	X(DROP_ENCAP, 23, DROP)                 \
	X(DROP_NO_CONFIG, 24, DROP)             \
	X(DROP_REDIRECT, 25, DROP)              \
	X(PASS_SLOW_PATH, 26, PASS)             \
	X(DROP_TUNNEL_WRONG_LINK, 27, DROP)     \
	X(DROP_DECAP_NO_FLOW, 28, DROP)         \
	X(DROP_DECAP_WRONG_TXR, 29, DROP)       \
	X(DROP_DECAP_MULTICAST, 30, DROP)       \
	X(DROP_DECAP_BROADCAST, 31, DROP)       \
	X(DROP_DECAP_LOOPBACK, 32, DROP)        \
	X(DROP_DECAP_RESERVED, 33, DROP)        \
	X(DROP_DECAP_SELF, 34, DROP)            \
	X(DROP_TTL_EXPIRED, 35, DROP)           \
	X(DROP_BAD_IP_CSUM, 36, DROP)           \
	X(DROP_FLOW_LIVE, 37, DROP)             \
	X(DROP_UFRAG_FLOOD, 38, DROP)           \
	X(DROP_UFRAG_EXPIRED, 39, DROP)         \
	X(DROP_BAD_CLIENT_ADDR, 40, DROP)       \
	X(DROP_IPV6_EXT_HEADERS, 41, DROP)      \
	X(DROP_UNKNOWN_CLUSTER, 42, DROP)       \
	EDGE_EXTRA_REASONS(X)

/* A hook for tests: reasons appended to the list without editing it, e.g.
 * -D'EDGE_EXTRA_REASONS(X)=X(FWD_TEST, 27, FWD)'. Empty in every real build. */
#ifndef EDGE_EXTRA_REASONS
#define EDGE_EXTRA_REASONS(X)
#endif

enum reason_kind {
	REASON_KIND_DROP = 0,
	REASON_KIND_PASS = 1,
	REASON_KIND_FWD = 2,
};

enum reason {
#define EDGE_REASON_ENUM(name, num, kind) REASON_##name = (num),
	EDGE_REASONS(EDGE_REASON_ENUM)
#undef EDGE_REASON_ENUM
};

/* Not a reason: what a path step returns when it did its part and the next step goes on (the
 * return convention, relay.c). Outside every counter slot; small enough to be an immediate. */
#define REASON_CONTINUE 0xffU

/* The number of reasons, and one bit per reason (bit n: reason n) for all of them and per kind. */
#define EDGE_REASON_ONE(name, num, kind) +1
#define EDGE_REASON_BIT(name, num, kind) | (1ULL << (num))
#define EDGE_REASON_FWD_BIT(name, num, kind) \
	| ((unsigned long long)(REASON_KIND_##kind == REASON_KIND_FWD) << (num))
#define EDGE_REASON_PASS_BIT(name, num, kind) \
	| ((unsigned long long)(REASON_KIND_##kind == REASON_KIND_PASS) << (num))
#define REASON_COUNT (0 EDGE_REASONS(EDGE_REASON_ONE))
#define REASONS_ALL (0ULL EDGE_REASONS(EDGE_REASON_BIT))
#define REASONS_FWD (0ULL EDGE_REASONS(EDGE_REASON_FWD_BIT))
#define REASONS_PASS (0ULL EDGE_REASONS(EDGE_REASON_PASS_BIT))

_Static_assert(REASON_COUNT < 64, "the masks are 64 bits: at most 63 reasons");
_Static_assert(REASONS_ALL == (1ULL << REASON_COUNT) - 1,
	       "reasons are numbered 0 .. REASON_COUNT - 1, each number once");
_Static_assert(REASON_COUNT <= COUNTER_SLOTS, "every reason needs a counter slot");
_Static_assert(COUNTER_SLOTS <= REASON_CONTINUE, "REASON_CONTINUE must not be a counter slot");

/* Two generated forms of the same property, each where it is cheapest. A value that is no reason
 * (REASON_CONTINUE, an unlisted number) is DROP in both: fail closed.
 *
 * reason_kind reads the masks: a shift and an and whatever the reason, for the entry point, where
 * the reason comes from any of the exits and is only known at run time. */
static __always_inline enum reason_kind reason_kind(__u32 reason)
{
	if (reason >= 64)
		return REASON_KIND_DROP;
	if ((REASONS_FWD >> reason) & 1)
		return REASON_KIND_FWD;
	if ((REASONS_PASS >> reason) & 1)
		return REASON_KIND_PASS;
	return REASON_KIND_DROP;
}

/* reason_is_forward compares with the list's constants (reason == 2 || reason == 3 ...): where
 * the compiler knows which constant a path returns, as in the middle of the program, it folds the
 * question away per path (it does not see through the masks' variable shift). */
static __always_inline int reason_is_forward(__u32 reason)
{
#define EDGE_REASON_IS_FWD(name, num, kind) \
	|| (reason == (num) && REASON_KIND_##kind == REASON_KIND_FWD)
	return 0 EDGE_REASONS(EDGE_REASON_IS_FWD);
#undef EDGE_REASON_IS_FWD
}

/* The XDP action for a packet whose path ended with `reason`. A forwarded packet leaves by the
 * port it came in on (XDP_TX) or by the port bpf_redirect() recorded (fib.h decides which). */
static __always_inline int reason_action(__u32 reason, int same_port)
{
	switch (reason_kind(reason)) {
	case REASON_KIND_FWD:
		return same_port ? XDP_TX : XDP_REDIRECT;
	case REASON_KIND_PASS:
		return XDP_PASS;
	default:
		return XDP_DROP;
	}
}

#endif
