/* Constants of the wire format (docs/wire-format.md) and the relay's limits.
 *
 * Wire constants are the format: they never change. Limits are choices of this build: each is
 * guarded by #ifndef, so a build or a test overrides it with -D (e.g. -DMAX_FLOWS=4096). relayctl
 * (control/maps.py) checks pinned maps against the default map sizes. */
#ifndef EDGE_CONSTANTS_H
#define EDGE_CONSTANTS_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

/* Byte order: BPF on x86_64/arm64 is little-endian; these fold to constants for literals. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define edge_htons(x) ((__be16)__builtin_bswap16(x))
#define edge_ntohs(x) ((__u16)__builtin_bswap16(x))
#define edge_htonl(x) ((__be32)__builtin_bswap32(x))
#define edge_ntohl(x) ((__u32)__builtin_bswap32(x))
#else
#define edge_htons(x) ((__be16)(x))
#define edge_ntohs(x) ((__u16)(x))
#define edge_htonl(x) ((__be32)(x))
#define edge_ntohl(x) ((__u32)(x))
#endif

#ifndef AF_INET /* not in the uapi headers the program includes */
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* ---- wire constants ---------------------------------------------------------------------- */

#define ETH_HDR_LEN 14
#define IPV4_HDR_LEN 20 /* IHL 5: anything longer carries options */
#define UDP_HDR_LEN 8
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff
/* Where a UDP payload starts in a frame the relay accepts (no VLAN tag, no IP options). */
#define PAYLOAD_OFF (ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN)
/* IPv6 (§3): the fixed header; the relay takes no extension headers, so a payload's offset is
 * fixed too. The next headers the relay recognises and refuses on traffic of its own: */
#define IPV6_HDR_LEN 40
#define PAYLOAD_OFF6 (ETH_HDR_LEN + IPV6_HDR_LEN + UDP_HDR_LEN)
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60

/* §2 STUN (RFC 8489) */
#define STUN_HDR_LEN 20
#define STUN_MAGIC 0x2112A442
#define STUN_BINDING_REQUEST 0x0001
#define STUN_ATTR_USERNAME 0x0006

/* §1 routing ufrag */
#define UFRAG_LEN 24
#define UFRAG_BYTES 18
#define UFRAG_VERSION 2
#define UFRAG_SIGNED_LEN 12
/* v2: a 12-bit coarse time in the hint, unix seconds / 300 mod 4096 (a 14.2-day cycle) */
#define UFRAG_EPOCH_NS (300ULL * 1000 * 1000 * 1000)
#define UFRAG_EPOCH_MASK 0xfffU
#define UFRAG_TAG_LEN 6
#define USERNAME_MIN_LEN (UFRAG_LEN + 1) /* "ufrag:" at least */
#define NUM_KEYS 16			 /* the key id is 4 bits */

/* §3 tunnel */
#define ENCAP_LEN (IPV4_HDR_LEN + UDP_HDR_LEN)
#define ENCAP_TTL 64
#define ENTROPY_MUL 0x7feb352dU

/* §4 relay_config.flags */
#define CONFIG_F_SLOW_PATH 0x1 /* a controller listens on the VIPs: pass unknown flows up */
/* §4 relay_config.tunnel_ifindex: the links tunnel datagrams may arrive on */
#define MAX_TUNNEL_LINKS 4
/* §4 flow_val.seen: bpf_ktime_get_coarse_ns() >> 30 (units of about 1.07 s), mod 2^16 */
#define FLOW_SEEN_SHIFT 30
/* §4 flow_val.txr_cache: tunnel addr (bits 0-31) | port (32-47) | txr_gen (48-63) */
#define TXR_CACHE_PORT_SHIFT 32
#define TXR_CACHE_GEN_SHIFT 48

/* clusters map values (maps.h): how this relay serves a cluster */
#define CLUSTER_LOCAL 1
#define CLUSTER_REMOTE 2

/* ---- limits (override with -D) ----------------------------------------------------------- */

/* §4 map sizes */
#ifndef MAX_VIPS
#define MAX_VIPS 64
#endif
#ifndef MAX_CLUSTERS
#define MAX_CLUSTERS 4096
#endif
#ifndef MAX_TRANSCEIVERS
#define MAX_TRANSCEIVERS 65536
#endif
#ifndef MAX_FLOWS
#define MAX_FLOWS 1048576
#endif
/* Counter slots: more than the reasons of §5 so new reasons fit a map pinned by an older build. */
#ifndef COUNTER_SLOTS
#define COUNTER_SLOTS 64
#endif

/* Defaults of the limits relay_config carries (a 0 field there means the default below;
 * `relayctl load` options override them within bounds, control/loader.py). */
/* A flow with a client packet within this many seen-units (about seconds) is live: a Binding
 * request naming another transceiver does not move it while its transceiver is in the map. */
#ifndef FLOW_IDLE_S
#define FLOW_IDLE_S 10
#endif
/* A ufrag creates (or moves) at most this many flows per window... */
#ifndef UFRAG_FLOW_LIMIT
#define UFRAG_FLOW_LIMIT 16
#endif
#ifndef UFRAG_WINDOW_S
#define UFRAG_WINDOW_S 60
#endif
/* ...and none once its epoch is older than this many epochs of 5 minutes (144: 12 hours), with
 * one epoch of clock slack either way. */
#ifndef UFRAG_MAX_AGE
#define UFRAG_MAX_AGE 144
#endif
/* The per-ufrag counters (an LRU: the least recently seen ufrag's count is forgotten first). */
#ifndef UFRAG_RATE_SLOTS
#define UFRAG_RATE_SLOTS 65536
#endif

/* The STUN attribute walk: at most this many attributes before USERNAME (each one costs the
 * verifier a loop iteration), and an upper bound for attribute offsets so the verifier can bound
 * packet pointers; an XDP frame without multi-buffer is at most a page, so no real message
 * reaches it. */
#ifndef STUN_MAX_ATTRS
#define STUN_MAX_ATTRS 16
#endif
#ifndef STUN_MAX_OFFSET
#define STUN_MAX_OFFSET 4096
#endif

/* The next-hop cache (fib.h): how long an answer is trusted, and 2^bits slots per CPU (56 bytes
 * each: 896 KiB per CPU at 14 bits). */
#ifndef NH_CACHE_NS
#define NH_CACHE_NS (250ULL * 1000 * 1000)
#endif
#ifndef NH_CACHE_BITS
#define NH_CACHE_BITS 14
#endif
#define NH_CACHE_SLOTS (1U << NH_CACHE_BITS)

/* The per-CPU flow copies (flowcopy.h): 2^bits slots per CPU (48 bytes and a 4-byte tag each:
 * 832 KiB per CPU at 14 bits), and as many shared slot versions. */
#ifndef FLOW_COPY_BITS
#define FLOW_COPY_BITS 14
#endif
#define FLOW_COPY_SLOTS (1U << FLOW_COPY_BITS)

#endif
