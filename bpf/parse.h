/* Ethernet / IPv4 / UDP parsing. Only what the relay needs: addresses, ports, lengths. */
#ifndef EDGE_PARSE_H
#define EDGE_PARSE_H

#include "constants.h"
#include "reasons.h"
#include "structs.h"

/* A 16-bit length field in host order, with bounds the verifier can see. Linux 6.1's verifier
 * forgets a register's bounds across a byte swap (later ones track them), and a length added to
 * a packet pointer (trim_frame) must be bounded, so the mask is explicit; the empty asm keeps
 * clang from dropping it as redundant. */
static __always_inline __u16 edge_ntohs_len(__be16 v)
{
	__u32 n = edge_ntohs(v);

	asm volatile("" : "+r"(n));
	return n & 0xffff;
}

/* Reads the headers up to the UDP ports into *d: REASON_CONTINUE for an IPv4/UDP datagram whose
 * ports could be read, pass_not_ipv4 for another ethertype (ARP, IPv6, VLAN...), pass_not_ours
 * for IPv4 the relay could not own. Non-first fragments carry no ports, so they cannot be
 * matched to a VIP: they go to the kernel (which drops them when reassembly times out). */
static __always_inline __u32 parse_udp4(void *data, void *data_end, struct udp4 *d)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HDR_LEN;
	struct udphdr *udp;
	__u32 ihl;

	if ((void *)(eth + 1) > data_end || eth->h_proto != edge_htons(ETH_P_IP))
		return REASON_PASS_NOT_IPV4;
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5 ||
	    ip->protocol != IPPROTO_UDP)
		return REASON_PASS_NOT_OURS;
	d->frag_off = edge_ntohs(ip->frag_off);
	if (d->frag_off & IP_OFFMASK)
		return REASON_PASS_NOT_OURS;
	ihl = ip->ihl * 4;
	udp = (void *)ip + ihl;
	if ((void *)(udp + 1) > data_end)
		return REASON_PASS_NOT_OURS;
	d->saddr = ip->saddr;
	d->daddr = ip->daddr;
	d->sport = udp->source;
	d->dport = udp->dest;
	d->tot_len = edge_ntohs_len(ip->tot_len);
	d->udp_len = edge_ntohs_len(udp->len);
	d->ihl = ihl;
	d->tos = ip->tos;
	return REASON_CONTINUE;
}

/* Reads an IPv6 packet's fixed header (and, next header UDP, its ports) into *d: REASON_CONTINUE,
 * pass_not_ipv4 for an ethertype that is neither (the IPv4 parser said it is not IPv4),
 * pass_not_ours for a frame too short for the header (and UDP ports) or another version. The
 * next header is left to the caller: only UDP is read further. */
static __always_inline __u32 parse_udp6(void *data, void *data_end, struct udp6 *d)
{
	struct ethhdr *eth = data;
	struct edge_ipv6hdr *ip6 = data + ETH_HDR_LEN;
	struct udphdr *udp = data + ETH_HDR_LEN + IPV6_HDR_LEN;

	if ((void *)(eth + 1) > data_end || eth->h_proto != edge_htons(ETH_P_IPV6))
		return REASON_PASS_NOT_IPV4;
	if ((void *)(ip6 + 1) > data_end || (edge_ntohl(ip6->vtc_flow) >> 28) != 6)
		return REASON_PASS_NOT_OURS;
	__builtin_memcpy(d->saddr, ip6->saddr, 16);
	__builtin_memcpy(d->daddr, ip6->daddr, 16);
	d->nexthdr = ip6->nexthdr;
	d->hop_limit = ip6->hop_limit;
	d->tclass = (__u8)(edge_ntohl(ip6->vtc_flow) >> 20);
	d->plen = edge_ntohs_len(ip6->payload_len);
	if (d->nexthdr != IPPROTO_UDP)
		return REASON_CONTINUE;
	if ((void *)(udp + 1) > data_end)
		return REASON_PASS_NOT_OURS;
	d->sport = udp->source;
	d->dport = udp->dest;
	d->udp_len = edge_ntohs_len(udp->len);
	return REASON_CONTINUE;
}

/* The IPv6 twin of check_udp4, for an IPv6/UDP datagram to a VIP6: the payload within the frame
 * (l3_len bytes after Ethernet), and a UDP length that is the payload length. */
static __always_inline __u32 check_udp6(const struct udp6 *d, __u32 l3_len)
{
	if ((__u32)d->plen + IPV6_HDR_LEN > l3_len)
		return REASON_DROP_TRUNCATED;
	if (d->udp_len < UDP_HDR_LEN || d->udp_len != d->plen)
		return REASON_DROP_BAD_UDP_LEN;
	return REASON_CONTINUE;
}

/* The checks every datagram the relay owns must pass (VIP and tunnel traffic alike): the drop
 * reason, or REASON_CONTINUE for a plain, complete IPv4/UDP datagram. */
static __always_inline __u32 check_udp4(const struct udp4 *d, __u32 l3_len)
{
	if (d->ihl != IPV4_HDR_LEN)
		return REASON_DROP_IP_OPTIONS;
	if (d->frag_off & IP_MF)
		return REASON_DROP_FRAGMENT;
	if (d->tot_len > l3_len)
		return REASON_DROP_TRUNCATED;
	if (d->udp_len < UDP_HDR_LEN || (__u32)d->udp_len + IPV4_HDR_LEN != d->tot_len)
		return REASON_DROP_BAD_UDP_LEN;
	return REASON_CONTINUE;
}

/* A 32-bit one's-complement sum folded to 16 bits (not inverted). */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The one's-complement sum of a 20-byte IPv4 header (checksum field included), folded to 16
 * bits: 0xffff when its checksum verifies. Read as five 32-bit words, which fold to the same 16
 * bits as its ten 16-bit halves (RFC 1071 §2: the sum is order- and grouping-independent), in
 * half the loads and adds. */
static __always_inline __u16 ipv4_hdr_sum(const void *hdr)
{
	const __u32 *w = hdr;
	__u64 sum = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];

	sum = (sum & 0xffffffffULL) + (sum >> 32);
	sum = (sum & 0xffffffffULL) + (sum >> 32);
	return csum_fold((__u32)sum);
}

/* Whether a 20-byte IPv4 header's checksum verifies. */
static __always_inline int ipv4_csum_ok(const struct iphdr *ip)
{
	return ipv4_hdr_sum(ip) == 0xffff;
}

/* The tunnel payload (len bytes at inner) must be a complete IPv4/UDP packet without options or
 * fragmentation, with agreeing lengths and a correct header checksum: the relay forwards it
 * unchanged. REASON_CONTINUE when it is, else drop_tunnel_bad_inner. */
static __always_inline __u32 check_inner_udp4(void *inner, void *data_end, __u32 len)
{
	struct iphdr *ip = inner;
	struct udphdr *udp = inner + IPV4_HDR_LEN;

	if (len < IPV4_HDR_LEN + UDP_HDR_LEN || (void *)(udp + 1) > data_end)
		return REASON_DROP_TUNNEL_BAD_INNER;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return REASON_DROP_TUNNEL_BAD_INNER;
	if (edge_ntohs(ip->frag_off) & (IP_MF | IP_OFFMASK))
		return REASON_DROP_TUNNEL_BAD_INNER;
	if (edge_ntohs(ip->tot_len) != len || edge_ntohs(udp->len) != len - IPV4_HDR_LEN)
		return REASON_DROP_TUNNEL_BAD_INNER;
	if (!ipv4_csum_ok(ip))
		return REASON_DROP_TUNNEL_BAD_INNER;
	return REASON_CONTINUE;
}

/* Whether a tunnel payload that is no good IPv4 is IPv6 (first nibble 6): asked only after
 * check_inner_udp4 refused it, so the IPv4 decap path pays nothing for IPv6. */
static __always_inline int inner_is_ipv6(void *inner, void *data_end)
{
	__u8 *first = inner;

	return (void *)(first + 1) <= data_end && (*first >> 4) == 6;
}

/* The IPv6 tunnel payload (len bytes at inner) must be a complete IPv6/UDP packet without
 * extension headers, with agreeing lengths (40 + payload length = len = 40 + UDP length); the UDP
 * checksum is the transceiver's (the relay changes only the hop limit, which it does not cover).
 * REASON_CONTINUE when it is, else drop_tunnel_bad_inner. */
static __always_inline __u32 check_inner_udp6(void *inner, void *data_end, __u32 len)
{
	struct edge_ipv6hdr *ip6 = inner;
	struct udphdr *udp = inner + IPV6_HDR_LEN;

	if (len < IPV6_HDR_LEN + UDP_HDR_LEN || (void *)(udp + 1) > data_end)
		return REASON_DROP_TUNNEL_BAD_INNER;
	if ((edge_ntohl(ip6->vtc_flow) >> 28) != 6 || ip6->nexthdr != IPPROTO_UDP)
		return REASON_DROP_TUNNEL_BAD_INNER;
	if (edge_ntohs(ip6->payload_len) + IPV6_HDR_LEN != len ||
	    edge_ntohs(udp->len) != len - IPV6_HDR_LEN)
		return REASON_DROP_TUNNEL_BAD_INNER;
	return REASON_CONTINUE;
}

#endif
