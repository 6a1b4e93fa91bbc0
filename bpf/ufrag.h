/* The routing ufrag (spec §1): base64 decode of 24 characters to 18 bytes, version check,
 * SipHash-2-4 tag check against the `keys` map, and the v2 epoch's age. */
#ifndef EDGE_UFRAG_H
#define EDGE_UFRAG_H

#include "constants.h"
#include "reasons.h"
#include "maps.h"
#include "siphash.h"
#include "structs.h"

/* Standard base64 alphabet, branch-free (after the constant-time decoders of BoringSSL): each
 * term adds value + 1 when c is in its range, so anything outside the alphabet (including '=',
 * '-', '_') stays -1. Branches here would multiply verifier states 24 times over. */
static __always_inline int b64_value(int c)
{
	int v = -1;

	v += (((0x40 - c) & (c - 0x5b)) >> 8) & (c - 64); /* 'A'..'Z' -> 0..25 */
	v += (((0x60 - c) & (c - 0x7b)) >> 8) & (c - 70); /* 'a'..'z' -> 26..51 */
	v += (((0x2f - c) & (c - 0x3a)) >> 8) & (c + 5);  /* '0'..'9' -> 52..61 */
	v += (((0x2a - c) & (c - 0x2c)) >> 8) & 63;	  /* '+' -> 62 */
	v += (((0x2e - c) & (c - 0x30)) >> 8) & 64;	  /* '/' -> 63 */
	return v;
}

/* Decodes 8 characters (48 bits, 6 bytes big-endian) into the low bits of a u64; *bad turns
 * negative on a character outside the alphabet. The loop stays rolled: fully unrolled, clang
 * vectorises the independent decodes and the BPF backend spills them past the 512-byte stack. */
static __always_inline __u64 b64_decode8(const __u8 *in, int *bad)
{
	__u64 acc = 0;

#pragma clang loop unroll(disable)
	for (int i = 0; i < 8; i++) {
		int v = b64_value(in[i]);

		*bad |= v; /* -1 sets the sign bit for good */
		acc = (acc << 6) | (__u64)(v & 63);
	}
	return acc;
}

/* Reads the USERNAME value at pl + off (len bytes, inside the packet) and verifies the routing
 * ufrag in it: REASON_CONTINUE with the transceiver it names in *txr and its epoch and tag in
 * *hint, or the drop reason. The 18 bytes are kept as three big-endian 48-bit numbers:
 * head = bytes 0..5, body = 6..11, tag = 12..17. */
static __always_inline __u32 ufrag_verify(void *pl, void *data_end, __u32 off, __u32 len,
					struct txr_key *txr, struct ufrag_hint *hint)
{
	__u8 chars[UFRAG_LEN + 1];
	struct routing_key *key;
	__u64 head, body, tag, m0, m1, sip;
	int bad = 0;
	__u32 kid;
	__u8 *p;

	if (len < USERNAME_MIN_LEN)
		return REASON_DROP_BAD_UFRAG;
	if (off > STUN_MAX_OFFSET)
		return REASON_DROP_TRUNCATED;
	p = pl + off;
	if (p + sizeof(chars) > (__u8 *)data_end)
		return REASON_DROP_TRUNCATED;
	__builtin_memcpy(chars, p, sizeof(chars));
	if (chars[UFRAG_LEN] != ':')
		return REASON_DROP_BAD_UFRAG;
	head = b64_decode8(chars, &bad);
	body = b64_decode8(chars + 8, &bad);
	tag = b64_decode8(chars + 16, &bad);
	if (bad < 0 || (head >> 44) != UFRAG_VERSION)
		return REASON_DROP_BAD_UFRAG;

	kid = (head >> 40) & 0x0f;
	key = keys.lookup(&kid);
	if (!key || !key->live)
		return REASON_DROP_UNKNOWN_KEY;
	/* SipHash reads bytes 0..7 and 8..11 little-endian */
	m0 = __builtin_bswap64((head << 16) | (body >> 32));
	m1 = __builtin_bswap32((__u32)body);
	sip = siphash24_12(key->k0, key->k1, m0, m1);
	/* the tag is the first 6 bytes of the little-endian serialisation of the result */
	if ((__builtin_bswap64(tag) >> 16) != (sip & 0xffffffffffffULL))
		return REASON_DROP_BAD_TAG;

	txr->cluster = (head >> 24) & 0xffff;
	txr->pad = 0;
	txr->id = (__u32)(((head & 0xffffff) << 8) | (body >> 40));
	hint->tag = tag;
	hint->epoch = (body >> 28) & UFRAG_EPOCH_MASK; /* byte 7 and the high nibble of byte 8 */
	return REASON_CONTINUE;
}

/* Whether a ufrag minted in `epoch` may still create flows at wall time wall_ns: its age (mod
 * 4096) at most max_age + 1 (a minter's clock one epoch behind), or exactly -1 (one ahead).
 * wire/ufrag.py's epoch_fresh is the same rule. */
static __always_inline int ufrag_epoch_fresh(__u32 epoch, __u64 wall_ns, __u32 max_age)
{
	__u32 now = (__u32)(wall_ns / UFRAG_EPOCH_NS) & UFRAG_EPOCH_MASK;
	__u32 age = (now - epoch) & UFRAG_EPOCH_MASK;

	return age <= max_age + 1 || age == UFRAG_EPOCH_MASK;
}

#endif
