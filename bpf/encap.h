/* The tunnel (spec §3): add or strip the outer IPv4+UDP header (28 bytes, no GUE header). */
#ifndef EDGE_ENCAP_H
#define EDGE_ENCAP_H

#include "constants.h"
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

/* Prepends outer IPv4 + UDP in front of the client's packet (inner_len bytes, IPv4 or IPv6, left
 * untouched; tos is its TOS or traffic class). The Ethernet header moves to the new front with
 * its MACs unchanged: fib.h rewrites them on success, and a packet handed to the kernel must keep
 * our own MAC as its destination; its ethertype is IPv4's (the outer header's). REASON_CONTINUE,
 * or drop_encap when the packet cannot grow. */
static __always_inline __u32 encap_udp4(struct xdp_md *ctx, __u8 tos, __u16 inner_len,
					__be32 saddr, __be32 daddr, __be16 sport, __be16 dport)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth_copy;
	struct iphdr outer = {};
	struct udphdr *udp;

	if (data + ETH_HDR_LEN > data_end)
		return REASON_DROP_ENCAP;
	__builtin_memcpy(&eth_copy, data, ETH_HDR_LEN);
	eth_copy.h_proto = edge_htons(ETH_P_IP); /* an IPv6 client's frame becomes IPv4 */
	if (bpf_xdp_adjust_head(ctx, -ENCAP_LEN))
		return REASON_DROP_ENCAP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	udp = data + ETH_HDR_LEN + IPV4_HDR_LEN;
	if ((void *)(udp + 1) > data_end)
		return REASON_DROP_ENCAP;

	outer.version = 4;
	outer.ihl = 5;
	outer.tos = tos;
	outer.tot_len = edge_htons(inner_len + ENCAP_LEN);
	outer.frag_off = edge_htons(IP_DF);
	outer.ttl = ENCAP_TTL;
	outer.protocol = IPPROTO_UDP;
	outer.saddr = saddr;
	outer.daddr = daddr;
	outer.check = (__sum16)~ipv4_hdr_sum(&outer); /* summed with check 0 */

	__builtin_memcpy(data, &eth_copy, ETH_HDR_LEN);
	__builtin_memcpy(data + ETH_HDR_LEN, &outer, IPV4_HDR_LEN);
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
	__builtin_memcpy(eth, data, 2 * ETH_ALEN); /* no overlap: 28 > 12 */
	eth->h_proto = edge_htons(ethertype);
	if (bpf_xdp_adjust_head(ctx, ENCAP_LEN))
		return REASON_DROP_ENCAP;
	return REASON_CONTINUE;
}

#endif
