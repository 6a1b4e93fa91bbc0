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

/* Classifies a UDP payload of plen (> 0) bytes. REASON_CONTINUE, with *binding_end = 20 + its
 * header length when it is a STUN Binding request (route it by its ufrag), and left 0 when it is
 * not STUN or other STUN (it follows the flow map); or the drop reason of malformed STUN. */
static __always_inline __u32 stun_classify(void *pl, void *data_end, __u32 plen,
					   __u32 *binding_end)
{
	struct stun_hdr *h = pl;
	__u32 mlen;

	if (pl + 1 > data_end || *(__u8 *)pl > 1) /* RFC 7983: STUN starts with 0 or 1 */
		return REASON_CONTINUE;
	if (plen < STUN_HDR_LEN || (void *)(h + 1) > data_end)
		return REASON_DROP_TRUNCATED;
	if (h->cookie != edge_htonl(STUN_MAGIC))
		return REASON_DROP_BAD_COOKIE;
	mlen = edge_ntohs(h->len);
	if (mlen & 3) /* RFC 8489: attributes are padded, so this is not STUN */
		return REASON_CONTINUE;
	if (STUN_HDR_LEN + mlen > plen)
		return REASON_DROP_TRUNCATED;
	if (h->type != edge_htons(STUN_BINDING_REQUEST))
		return REASON_CONTINUE;
	*binding_end = STUN_HDR_LEN + mlen;
	return REASON_CONTINUE;
}

/* Walks at most STUN_MAX_ATTRS attributes of the message [0, msg_end) at pl. REASON_CONTINUE
 * with the offset and length of the USERNAME value, or the drop reason. msg_end - 20 is a
 * multiple of 4 and every step is a multiple of 4, so the walk ends exactly at msg_end. */
static __always_inline __u32 stun_find_username(void *pl, void *data_end, __u32 msg_end,
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
			return REASON_CONTINUE;
		}
		off += sizeof(*a) + ((len + 3) & ~3U);
	}
	return REASON_DROP_NO_USERNAME;
}

#endif
