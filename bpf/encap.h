/* The tunnel (spec §3): add or strip the outer IPv4+UDP header (28 bytes, no GUE header). */
#ifndef EDGE_ENCAP_H
#define EDGE_ENCAP_H

#include "constants.h"
#include "eth.h"
#include "reasons.h"
#include "parse.h"
#include "structs.h"

/* Receivers spread flows over queues by the outer source port (as katran does). */
static __always_inline __be16 flow_entropy(__be32 client_addr, __be16 client_port, __be16 vip_port)
{
	__u32 h = edge_ntohl(client_addr) ^
		  (((__u32)edge_ntohs(client_port) << 16) | edge_ntohs(vip_port));

	h ^= h >> 16;
	h *= ENTROPY_MUL;
	h ^= h >> 15;
	return edge_htons(0x8000 | (h & 0x7fff));
}

/* Cuts link-layer padding after the IP packet, so that it is not tunnelled as payload:
 * REASON_CONTINUE, or drop_encap when the kernel refuses. */
static __always_inline __u32 trim_frame(struct xdp_md *ctx, __u32 frame_len)
{
	int excess = (int)(ctx->data_end - ctx->data) - (int)frame_len;

	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess))
		return REASON_DROP_ENCAP;
	return REASON_CONTINUE;
}

/* IPv6 clients: the entropy of the four address words xor-ed (§3; the byte swap commutes with
 * xor, so the words are xor-ed as they are). */
static __always_inline __be16 flow_entropy6(const __be32 *client_addr, __be16 client_port,
					    __be16 vip_port)
{
	return flow_entropy(client_addr[0] ^ client_addr[1] ^ client_addr[2] ^ client_addr[3],
			    client_port, vip_port);
}

/* The outer header's checksum, from its fields (id 0, DF, TTL ENCAP_TTL, UDP): summed in
 * registers rather than read back from the packet right after its stores. */
static __always_inline __sum16 encap_csum(__u8 tos, __u16 tot_len, __be32 saddr, __be32 daddr)
{
	__u32 s = edge_ntohl(saddr), d = edge_ntohl(daddr);
	__u32 sum = (0x4500 | tos) + tot_len + IP_DF + (ENCAP_TTL << 8 | IPPROTO_UDP) + (s >> 16) +
		    (s & 0xffff) + (d >> 16) + (d & 0xffff);

	return (__sum16)edge_htons((__u16)~csum_fold(sum));
}

/* Prepends outer IPv4 + UDP in front of the client's packet (inner_len bytes, IPv4 or IPv6, left
 * untouched; tos is its TOS or traffic class). The Ethernet header moves to the new front with
 * its MACs unchanged: fib.h rewrites them on success, and a packet handed to the kernel must keep
 * our own MAC as its destination; its ethertype is IPv4's (the outer header's). The headers are
 * written field by field through typed pointers (one store each), not built on the stack and
 * copied. REASON_CONTINUE, or drop_encap when the packet cannot grow. */
static __always_inline __u32 encap_udp4(struct xdp_md *ctx, __u8 tos, __u16 inner_len,
					__be32 saddr, __be32 daddr, __be16 sport, __be16 dport)
{
	void *data, *data_end;
	struct ethhdr *eth, *old_eth;
	struct iphdr *ip;
	struct udphdr *udp;
	__u16 tot_len = inner_len + ENCAP_LEN;

	if (bpf_xdp_adjust_head(ctx, -ENCAP_LEN))
		return REASON_DROP_ENCAP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	old_eth = data + ENCAP_LEN; /* the frame's old front, still in place */
	ip = data + ETH_HDR_LEN;
	udp = data + ETH_HDR_LEN + IPV4_HDR_LEN;
	if ((void *)(old_eth + 1) > data_end)
		return REASON_DROP_ENCAP;

	mac_copy(eth->h_dest, old_eth->h_dest); /* no overlap: 28 > 12 */
	mac_copy(eth->h_source, old_eth->h_source);
	eth->h_proto = edge_htons(ETH_P_IP); /* an IPv6 client's frame becomes IPv4 */
	*(__u8 *)ip = 0x45;		     /* version 4, IHL 5 */
	ip->tos = tos;
	ip->tot_len = edge_htons(tot_len);
	ip->id = 0;
	ip->frag_off = edge_htons(IP_DF);
	ip->ttl = ENCAP_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = encap_csum(tos, tot_len, saddr, daddr);
	ip->saddr = saddr;
	ip->daddr = daddr;
	udp->source = sport;
	udp->dest = dport;
	udp->len = edge_htons(inner_len + UDP_HDR_LEN);
	udp->check = 0; /* allowed for UDP over IPv4; the inner packet has its own */
	return REASON_CONTINUE;
}

/* Strips the outer 28 bytes; the Ethernet header (MACs kept, for the same reason as above) is
 * rewritten just in front of the inner header first, with the inner packet's ethertype (ETH_P_IP
 * or ETH_P_IPV6). REASON_CONTINUE or drop_encap. */
static __always_inline __u32 decap_udp4(struct xdp_md *ctx, __u16 ethertype)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data + ENCAP_LEN;

	if ((void *)(eth + 1) > data_end)
		return REASON_DROP_ENCAP;
	mac_copy(eth->h_dest, data); /* no overlap: 28 > 12 */
	mac_copy(eth->h_source, data + ETH_ALEN);
	eth->h_proto = edge_htons(ethertype);
	if (bpf_xdp_adjust_head(ctx, ENCAP_LEN))
		return REASON_DROP_ENCAP;
	return REASON_CONTINUE;
}

#endif
