/* SipHash-2-4 (Aumasson & Bernstein) of the 12 signed bytes of a routing ufrag. */
#ifndef EDGE_SIPHASH_H
#define EDGE_SIPHASH_H

#include "constants.h"

#define SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND(v0, v1, v2, v3)                                                               \
	do {                                                                                    \
		v0 += v1;                                                                       \
		v1 = SIP_ROTL(v1, 13);                                                          \
		v1 ^= v0;                                                                       \
		v0 = SIP_ROTL(v0, 32);                                                          \
		v2 += v3;                                                                       \
		v3 = SIP_ROTL(v3, 16);                                                          \
		v3 ^= v2;                                                                       \
		v0 += v3;                                                                       \
		v3 = SIP_ROTL(v3, 21);                                                          \
		v3 ^= v0;                                                                       \
		v2 += v1;                                                                       \
		v1 = SIP_ROTL(v1, 17);                                                          \
		v1 ^= v2;                                                                       \
		v2 = SIP_ROTL(v2, 32);                                                          \
	} while (0)

/* The message is exactly 12 bytes: one full block m0 (bytes 0..7 read little-endian), then the
 * last block holds bytes 8..11 (m1, little-endian) and the length in its top byte. */
static __always_inline __u64 siphash24_12(__u64 k0, __u64 k1, __u64 m0, __u32 m1)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	__u64 b = m0;

	v3 ^= b;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= b;
	b = (12ULL << 56) | m1;
	v3 ^= b;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

#endif
