/* STUN, as far as the relay reads it (spec §2): the header, and a bounded walk to USERNAME. */
#ifndef EDGE_STUN_H
#define EDGE_STUN_H

#include "constants.h"
#include "reasons.h"

struct stun_hdr {
	__be16 type;
	__be16 len;
	__be32 cookie;
	__u8 tid[12];
};

struct stun_attr {
	__be16 type;
	__be16 len;
};

enum stun_class {
	STUN_FOLLOW_FLOW = 0, /* not STUN, or STUN other than a Binding request */
	STUN_BINDING = 1,     /* a Binding request: route it by its ufrag */
	STUN_DROP = 2,	      /* malformed: *reason says why */
};

/* Classifies a UDP payload of plen (> 0) bytes; on STUN_BINDING *msg_end is 20 + header length. */
static __always_inline enum stun_class stun_classify(void *pl, void *data_end, __u32 plen,
						     __u32 *msg_end, int *reason)
{
	struct stun_hdr *h = pl;
	__u32 mlen;

	if (pl + 1 > data_end || *(__u8 *)pl > 1) /* RFC 7983: STUN starts with 0 or 1 */
		return STUN_FOLLOW_FLOW;
	if (plen < STUN_HDR_LEN || (void *)(h + 1) > data_end) {
		*reason = REASON_DROP_TRUNCATED;
		return STUN_DROP;
	}
	if (h->cookie != edge_htonl(STUN_MAGIC)) {
		*reason = REASON_DROP_BAD_COOKIE;
		return STUN_DROP;
	}
	mlen = edge_ntohs(h->len);
	if (mlen & 3) /* RFC 8489: attributes are padded, so this is not STUN */
		return STUN_FOLLOW_FLOW;
	if (STUN_HDR_LEN + mlen > plen) {
		*reason = REASON_DROP_TRUNCATED;
		return STUN_DROP;
	}
	if (h->type != edge_htons(STUN_BINDING_REQUEST))
		return STUN_FOLLOW_FLOW;
	*msg_end = STUN_HDR_LEN + mlen;
	return STUN_BINDING;
}

/* Walks at most STUN_MAX_ATTRS attributes of the message [0, msg_end) at pl. Returns 0 and the
 * offset and length of the USERNAME value, or the drop reason. msg_end - 20 is a multiple of 4
 * and every step is a multiple of 4, so the walk ends exactly at msg_end. */
static __always_inline int stun_find_username(void *pl, void *data_end, __u32 msg_end,
					      __u32 *val_off, __u32 *val_len)
{
	__u32 off = STUN_HDR_LEN;

	for (int i = 0; i < STUN_MAX_ATTRS; i++) {
		struct stun_attr *a;
		__u32 len;

		if (off >= msg_end)
			return REASON_DROP_NO_USERNAME;
		if (off > STUN_MAX_OFFSET) /* bounds the pointer for the verifier */
			return REASON_DROP_TRUNCATED;
		a = pl + off;
		if ((void *)(a + 1) > data_end)
			return REASON_DROP_TRUNCATED;
		len = edge_ntohs(a->len);
		if (off + sizeof(*a) + len > msg_end)
			return REASON_DROP_TRUNCATED;
		if (a->type == edge_htons(STUN_ATTR_USERNAME)) {
			*val_off = off + sizeof(*a);
			*val_len = len;
			return 0;
		}
		off += sizeof(*a) + ((len + 3) & ~3U);
	}
	return REASON_DROP_NO_USERNAME;
}

#endif
