"""IPv4/UDP and IPv6/UDP packets and the relay tunnel (docs/wire-format.md §3).

The relay sends the client's whole IPv4/UDP or IPv6/UDP packet as the payload of an outer IPv4
UDP datagram (no GUE header: the first nibble, 4 or 6, says which); transceivers answer the same
way. These functions build and check exactly what the BPF program emits and accepts. The
tunnel functions take either family; `parse_udp()` reads either.

Two kinds of builder, one set of bytes: `ipv4_udp()` makes any packet; `PathHeader` makes the
packets of one fixed address pair (a transceiver's replies on one tunneled path) with everything
but the lengths and checksums computed once. `inbound_key()` reads the 12 address and port
bytes of a plain inbound packet without parsing it, so a receiver can find its path in a dict.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from wire.defaults import IP_TTL

Addr = tuple[str, int]
IP_HLEN = 20
UDP_HLEN = 8
OUTER_LEN = IP_HLEN + UDP_HLEN
PROTO_UDP = 17
_DF = 0x4000
_MF_OFFSET = 0x3FFF  # MF flag + fragment offset: any bit set means a fragment
_IP = struct.Struct(">BBHHHBBH4s4s")
IP6_HLEN = 40
_IP6 = struct.Struct(">IHBB16s16s")  # version/class/label, payload length, next header, hops
# next headers a client packet may carry that the relay refuses (docs/wire-format.md §3):
# hop-by-hop 0, routing 43, destination options 60 (drop_ipv6_ext_headers), fragment 44
EXT_HEADERS = (0, 43, 60)
NH_FRAGMENT = 44
_UDP = struct.Struct(">HHHH")
_U16 = struct.Struct(">H")


class EncapError(ValueError):
    """A packet that is not a well-formed IPv4/UDP packet or tunnel datagram."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    tos: int = 0
    ttl: int = IP_TTL


def _words(data: bytes) -> int:
    """`data` as one big-endian integer, zero-padded to whole 16-bit words."""
    return int.from_bytes(data + b"\x00" if len(data) & 1 else data, "big")


def _fold(value: int) -> int:
    """The ones' complement sum (RFC 1071) of the 16-bit words that make up `value`.

    `value` may be `_words(data)`, a plain sum of words, or a sum of both: since 2**16 is 1
    modulo 0xFFFF, a number and the sum of its 16-bit digits are equal modulo 0xFFFF, so one
    `%` replaces the word loop. The end-around carry never folds a nonzero sum to 0, hence 0xFFFF
    where `%` says 0; only all-zero words sum to 0.
    """
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: 0 over a packet whose checksum is right."""
    return 0xFFFF - _fold(_words(data))


def _addr(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def _udp_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    pseudo = src + dst + struct.pack(">BBH", 0, PROTO_UDP, len(udp))
    csum = checksum(pseudo + udp)
    return csum or 0xFFFF  # 0 means "no checksum" in UDP over IPv4


def _ip_header(
    src: bytes, dst: bytes, total: int, *, ttl: int, tos: int, ident: int, df: bool
) -> bytes:
    hdr = _IP.pack(0x45, tos, total, ident, _DF if df else 0, ttl, PROTO_UDP, 0, src, dst)
    return hdr[:10] + _U16.pack(checksum(hdr)) + hdr[12:]


def ipv4_udp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    payload: bytes,
    *,
    ttl: int = IP_TTL,
    tos: int = 0,
    ident: int = 0,
    df: bool = False,
) -> bytes:
    """A complete IPv4 (IHL 5) + UDP packet with correct IPv4 and UDP checksums."""
    s, d = _addr(src), _addr(dst)
    ulen = UDP_HLEN + len(payload)
    if IP_HLEN + ulen > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit in one IPv4 packet")
    udp = _UDP.pack(sport, dport, ulen, 0) + payload
    udp = udp[:6] + _U16.pack(_udp_checksum(s, d, udp)) + udp[8:]
    return _ip_header(s, d, IP_HLEN + ulen, ttl=ttl, tos=tos, ident=ident, df=df) + udp


def parse_ipv4_udp(pkt: bytes, *, verify_checksums: bool = False) -> Datagram:
    """Parse an IPv4/UDP packet without options or fragmentation whose lengths agree.

    Bytes after the IPv4 total length (Ethernet padding) are ignored. Checksums are only
    verified on request: packets seen on veth often carry offloaded (partial) UDP checksums.
    """
    if len(pkt) < IP_HLEN:
        raise EncapError("truncated", f"{len(pkt)} bytes is shorter than an IPv4 header")
    vihl, tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(pkt)
    if vihl >> 4 != 4:
        raise EncapError("not_ipv4", f"IP version {vihl >> 4}, expected 4")
    if vihl & 0x0F != 5:
        raise EncapError("ip_options", f"IPv4 header length {4 * (vihl & 0x0F)}, expected 20")
    if frag & _MF_OFFSET:
        raise EncapError("fragment", "IPv4 fragment")
    if proto != PROTO_UDP:
        raise EncapError("not_udp", f"IP protocol {proto}, expected 17")
    if total > len(pkt):
        raise EncapError("truncated", f"IPv4 total length {total} exceeds the {len(pkt)} bytes")
    if total < IP_HLEN + UDP_HLEN:
        raise EncapError("bad_ip_len", f"IPv4 total length {total} leaves no room for UDP")
    sport, dport, ulen, ucsum = _UDP.unpack_from(pkt, IP_HLEN)
    if ulen != total - IP_HLEN:
        raise EncapError("bad_udp_len", f"UDP length {ulen} != IPv4 payload {total - IP_HLEN}")
    if verify_checksums:
        if checksum(pkt[:IP_HLEN]):
            raise EncapError("bad_checksum", "IPv4 header checksum is wrong")
        if ucsum and checksum(
            src + dst + struct.pack(">BBH", 0, PROTO_UDP, ulen) + pkt[IP_HLEN:total]
        ):
            raise EncapError("bad_checksum", "UDP checksum is wrong")
    return Datagram(
        src=str(ipaddress.IPv4Address(src)),
        sport=sport,
        dst=str(ipaddress.IPv4Address(dst)),
        dport=dport,
        payload=bytes(pkt[IP_HLEN + UDP_HLEN : total]),
        tos=tos,
        ttl=ttl,
    )


def _addr6(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


def ipv6_udp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    payload: bytes,
    *,
    hop_limit: int = IP_TTL,
    tclass: int = 0,
    flow_label: int = 0,
) -> bytes:
    """A complete IPv6 (no extension headers) + UDP packet with its UDP checksum (RFC 8200
    §8.1: mandatory over IPv6, 0 sent as 0xFFFF)."""
    s, d = _addr6(src), _addr6(dst)
    ulen = UDP_HLEN + len(payload)
    if ulen > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit in one IPv6 packet")
    udp = _UDP.pack(sport, dport, ulen, 0) + payload
    pseudo = s + d + struct.pack(">IxxxB", ulen, PROTO_UDP)
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + _U16.pack(csum) + udp[8:]
    first = 6 << 28 | (tclass & 0xFF) << 20 | (flow_label & 0xFFFFF)
    return _IP6.pack(first, ulen, PROTO_UDP, hop_limit, s, d) + udp


def parse_ipv6_udp(pkt: bytes, *, verify_checksums: bool = False) -> Datagram:
    """Parse an IPv6/UDP packet without extension headers whose lengths agree (payload length
    = UDP length). Bytes after the payload length (Ethernet padding) are ignored; `ttl` is the
    hop limit and `tos` the traffic class. A UDP checksum of 0 is refused when verifying (it
    is not allowed over IPv6)."""
    if len(pkt) < IP6_HLEN:
        raise EncapError("truncated", f"{len(pkt)} bytes is shorter than an IPv6 header")
    first, plen, nxt, hops, src, dst = _IP6.unpack_from(pkt)
    if first >> 28 != 6:
        raise EncapError("not_ipv6", f"IP version {first >> 28}, expected 6")
    if nxt == NH_FRAGMENT:
        raise EncapError("fragment", "IPv6 fragment")
    if nxt in EXT_HEADERS:
        raise EncapError("ext_headers", f"IPv6 extension header {nxt}")
    if nxt != PROTO_UDP:
        raise EncapError("not_udp", f"IPv6 next header {nxt}, expected 17")
    if IP6_HLEN + plen > len(pkt):
        raise EncapError("truncated", f"IPv6 payload length {plen} exceeds the packet")
    if plen < UDP_HLEN:
        raise EncapError("bad_ip_len", f"IPv6 payload length {plen} leaves no room for UDP")
    sport, dport, ulen, ucsum = _UDP.unpack_from(pkt, IP6_HLEN)
    if ulen != plen:
        raise EncapError("bad_udp_len", f"UDP length {ulen} != IPv6 payload length {plen}")
    end = IP6_HLEN + plen
    if verify_checksums:
        pseudo = src + dst + struct.pack(">IxxxB", ulen, PROTO_UDP)
        if not ucsum or checksum(pseudo + pkt[IP6_HLEN:end]):
            raise EncapError("bad_checksum", "UDP checksum is wrong")
    return Datagram(
        src=str(ipaddress.IPv6Address(src)),
        sport=sport,
        dst=str(ipaddress.IPv6Address(dst)),
        dport=dport,
        payload=bytes(pkt[IP6_HLEN + UDP_HLEN : end]),
        tos=(first >> 20) & 0xFF,
        ttl=hops,
    )


def ip_version(pkt: bytes) -> int:
    """The first nibble: 4 or 6 for what the tunnel carries (0 for an empty packet)."""
    return pkt[0] >> 4 if pkt else 0


def parse_udp(pkt: bytes, *, verify_checksums: bool = False) -> Datagram:
    """`parse_ipv4_udp` or `parse_ipv6_udp` by the first nibble; EncapError otherwise."""
    version = ip_version(pkt)
    if version == 6:
        return parse_ipv6_udp(pkt, verify_checksums=verify_checksums)
    if version == 4:
        return parse_ipv4_udp(pkt, verify_checksums=verify_checksums)
    if not pkt:
        raise EncapError("truncated", "empty packet")
    raise EncapError("not_ip", f"IP version {version}, expected 4 or 6")


def udp_packet(src: Addr, dst: Addr, payload: bytes, *, ttl: int = IP_TTL, tos: int = 0) -> bytes:
    """`ipv4_udp` or `ipv6_udp` by the addresses' family (both must be of one family)."""
    if ":" in src[0]:
        return ipv6_udp(src[0], src[1], dst[0], dst[1], payload, hop_limit=ttl, tclass=tos)
    return ipv4_udp(src[0], src[1], dst[0], dst[1], payload, ttl=ttl, tos=tos)


def _entropy_addr(client_addr: str) -> int:
    """The client address as the u32 the entropy hash starts from: IPv4 as it is, IPv6 its
    four 32-bit words xor-ed (docs/wire-format.md §3)."""
    a = ipaddress.ip_address(client_addr)
    if a.version == 4:
        return int(a)
    n = int(a)
    return (n ^ n >> 32 ^ n >> 64 ^ n >> 96) & 0xFFFFFFFF


def flow_entropy(client_addr: str, client_port: int, vip_port: int) -> int:
    """The outer UDP source port for a flow (katran-style spread over receive queues)."""
    h = _entropy_addr(client_addr) ^ ((client_port << 16) | vip_port)
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    return 0x8000 | (h & 0x7FFF)


def encapsulate(inner: bytes, relay_addr: str, txr_addr: str, txr_port: int) -> bytes:
    """Outer IPv4 + UDP + `inner` (IPv4/UDP or IPv6/UDP), byte for byte what the relay emits
    (without Ethernet); the outer TOS is the inner TOS or traffic class."""
    d = parse_udp(inner)
    total = OUTER_LEN + len(inner)
    if total > 0xFFFF:
        raise EncapError("too_big", f"{len(inner)}-byte packet does not fit in a tunnel datagram")
    ip = _ip_header(
        _addr(relay_addr), _addr(txr_addr), total, ttl=IP_TTL, tos=d.tos, ident=0, df=True
    )
    udp = _UDP.pack(flow_entropy(d.src, d.sport, d.dport), txr_port, UDP_HLEN + len(inner), 0)
    return ip + udp + inner


def forward_hop(pkt: bytes) -> bytes:
    """`pkt` as a router forwards it: TTL one less, header checksum updated (what the relay does
    to the inner packet in both directions); EncapError("ttl_expired") for TTL 0 or 1. For
    IPv6 the hop limit, which no checksum covers."""
    if ip_version(pkt) == 6:
        hops = pkt[7]
        if hops <= 1:
            raise EncapError("ttl_expired", f"hop limit {hops}: a router drops it")
        return pkt[:7] + bytes([hops - 1]) + pkt[8:]
    ttl = pkt[8]
    if ttl <= 1:
        raise EncapError("ttl_expired", f"TTL {ttl}: a router drops it")
    head = bytearray(pkt[:IP_HLEN])
    head[8] = ttl - 1
    head[10:12] = b"\x00\x00"
    head[10:12] = checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + pkt[IP_HLEN:]


def decapsulate(outer: bytes) -> bytes:
    """The inner IPv4/UDP or IPv6/UDP packet of a tunnel datagram; raises EncapError when
    malformed.

    Both layers must be well formed and their lengths agree (outer UDP payload == inner
    IPv4 total length, or 40 + IPv6 payload length), as the relay requires of datagrams from
    transceivers.
    """
    tunnel = parse_ipv4_udp(outer)
    inner = tunnel.payload
    try:
        parse_udp(inner)
    except EncapError as exc:
        raise EncapError("bad_inner", f"tunnel payload: {exc.message}") from None
    if ip_version(inner) == 6:
        if IP6_HLEN + int.from_bytes(inner[4:6], "big") != len(inner):
            raise EncapError("bad_inner", "tunnel payload length != 40 + IPv6 payload length")
    elif int.from_bytes(inner[2:4], "big") != len(inner):
        raise EncapError("bad_inner", "tunnel payload length != inner IPv4 total length")
    return inner


def _addr_any(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def path_key(client: Addr, vip: Addr) -> bytes:
    """What `inbound_key()` returns for packets client -> VIP: addresses, then ports (12 bytes
    for IPv4, 36 for IPv6: the two families never share a key)."""
    return _addr_any(client[0]) + _addr_any(vip[0]) + struct.pack(">HH", client[1], vip[1])


def inbound_key(pkt: bytes) -> bytes | None:
    """Source and destination address and port (12 raw bytes for IPv4, 36 for IPv6) of a plain
    IPv4/UDP or IPv6/UDP packet.

    Plain: IPv4 IHL 5, UDP, not a fragment, both lengths equal to the packet's; IPv6 next header
    UDP (no extension headers), payload length and UDP length equal to the packet's. Anything
    else is None, so the caller falls back to `parse_udp()`, which says what is wrong.
    """
    if pkt and pkt[0] >> 4 == 6:
        if len(pkt) < IP6_HLEN + UDP_HLEN or pkt[6] != PROTO_UDP:
            return None
        plen = (pkt[4] << 8) | pkt[5]
        if plen != len(pkt) - IP6_HLEN or ((pkt[44] << 8) | pkt[45]) != plen:
            return None
        return pkt[8:44]
    if len(pkt) < OUTER_LEN or pkt[0] != 0x45 or pkt[9] != PROTO_UDP:
        return None
    if pkt[6] & 0x3F or pkt[7]:  # MF flag or a fragment offset
        return None
    total = (pkt[2] << 8) | pkt[3]
    if total != len(pkt) or ((pkt[24] << 8) | pkt[25]) != total - IP_HLEN:
        return None
    return pkt[12:24]


class PathHeader:
    """`udp_packet(src, dst, payload)` for one fixed address pair, made fast.

    Same bytes (IPv4: IHL 5, TTL 64, id 0, no DF, tos 0, both checksums; IPv6: class 0, label
    0, hop limit 64, the UDP checksum): everything but the lengths and checksums is built once,
    and the checksums start from the precomputed sums of the words that never change, so a
    packet costs one `int.from_bytes()` of its payload.
    """

    __slots__ = ("_fixed", "_ip_sum", "_udp_sum", "_v6")

    def __init__(self, src: Addr, dst: Addr) -> None:
        self._v6 = ":" in src[0]
        if self._v6:
            s, d = _addr6(src[0]), _addr6(dst[0])
            self._fixed = _IP6.pack(6 << 28, 0, PROTO_UDP, IP_TTL, s, d) + _UDP.pack(
                src[1], dst[1], 0, 0
            )
            self._ip_sum = 0
        else:
            s, d = _addr(src[0]), _addr(dst[0])
            self._fixed = _IP.pack(0x45, 0, 0, 0, 0, IP_TTL, PROTO_UDP, 0, s, d) + _UDP.pack(
                src[1], dst[1], 0, 0
            )
            # IPv4 header without total length and checksum
            self._ip_sum = _words(self._fixed[:IP_HLEN])
        # UDP pseudo header and header without the two length fields and the checksum (the
        # IPv6 pseudo header's 32-bit length is the same 16-bit word once it fits 16 bits)
        self._udp_sum = _words(s + d) + PROTO_UDP + src[1] + dst[1]

    def wrap(self, payload: bytes) -> bytes:
        ulen = UDP_HLEN + len(payload)
        # the UDP length counts twice: in the pseudo header and in the UDP header
        udp_csum = 0xFFFF - _fold(self._udp_sum + 2 * ulen + _words(payload))
        header = bytearray(self._fixed)
        if self._v6:
            if ulen > 0xFFFF:
                raise ValueError(f"payload of {len(payload)} bytes does not fit in one packet")
            header[4:6] = _U16.pack(ulen)
            header[44:46] = _U16.pack(ulen)
            header[46:48] = _U16.pack(udp_csum or 0xFFFF)
        else:
            total = IP_HLEN + ulen
            if total > 0xFFFF:
                raise ValueError(f"payload of {len(payload)} bytes does not fit in one packet")
            header[2:4] = _U16.pack(total)
            header[10:12] = _U16.pack(0xFFFF - _fold(self._ip_sum + total))
            header[24:26] = _U16.pack(ulen)
            header[26:28] = _U16.pack(udp_csum or 0xFFFF)  # 0 would mean "no checksum"
        header += payload
        return bytes(header)


class TunnelHeader:
    """`encapsulate(inner, relay_addr, txr_addr, txr_port)` for one flow, made fast.

    Same bytes (outer IPv4: TTL 64, DF, id 0, the inner TOS; outer UDP: the flow's entropy
    source port, checksum 0): a packet costs two header-field packs and one 16-bit fold. The
    userspace relay (lab/pyrelay.py) builds every tunnel datagram with it.
    """

    __slots__ = ("_fixed", "_ip_sum")

    def __init__(self, relay_addr: str, txr: Addr, entropy_port: int) -> None:
        s, d = _addr(relay_addr), _addr(txr[0])
        self._fixed = _IP.pack(0x45, 0, 0, 0, _DF, IP_TTL, PROTO_UDP, 0, s, d) + _UDP.pack(
            entropy_port, txr[1], 0, 0
        )
        self._ip_sum = _words(self._fixed[:IP_HLEN])

    def wrap(self, inner: bytes, tos: int = 0) -> bytes:
        total = OUTER_LEN + len(inner)
        if total > 0xFFFF:
            raise EncapError("too_big", f"{len(inner)}-byte packet does not fit in a tunnel")
        header = bytearray(self._fixed)
        header[1] = tos
        header[2:4] = _U16.pack(total)
        # tos is the low byte of the first header word: it adds to the sum as it is
        header[10:12] = _U16.pack(0xFFFF - _fold(self._ip_sum + tos + total))
        header[24:26] = _U16.pack(UDP_HLEN + len(inner))
        return bytes(header) + inner
