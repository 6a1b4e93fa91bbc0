"""IPv4/UDP packets and the relay tunnel (docs/wire-format.md §3).

The relay sends the client's whole IPv4/UDP packet as the payload of an outer UDP datagram (no
GUE header: the first nibble, 4, says IPv4); transceivers answer the same way. These functions
build and check exactly what the BPF program emits and accepts.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

RELAY_TUNNEL_PORT = 6080
IP_HLEN = 20
UDP_HLEN = 8
OUTER_LEN = IP_HLEN + UDP_HLEN
PROTO_UDP = 17
DEFAULT_TTL = 64
_DF = 0x4000
_MF_OFFSET = 0x3FFF  # MF flag + fragment offset: any bit set means a fragment
_IP = struct.Struct(">BBHHHBBH4s4s")
_UDP = struct.Struct(">HHHH")


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
    ttl: int = DEFAULT_TTL


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


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
    return hdr[:10] + struct.pack(">H", checksum(hdr)) + hdr[12:]


def ipv4_udp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    payload: bytes,
    *,
    ttl: int = DEFAULT_TTL,
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
    udp = udp[:6] + struct.pack(">H", _udp_checksum(s, d, udp)) + udp[8:]
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


def flow_entropy(client_addr: str, client_port: int, vip_port: int) -> int:
    """The outer UDP source port for a flow (katran-style spread over receive queues)."""
    h = int(ipaddress.IPv4Address(client_addr)) ^ ((client_port << 16) | vip_port)
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    return 0x8000 | (h & 0x7FFF)


def encapsulate(inner: bytes, relay_addr: str, txr_addr: str, txr_port: int) -> bytes:
    """Outer IPv4 + UDP + `inner`, byte for byte what the relay emits (without Ethernet)."""
    d = parse_ipv4_udp(inner)
    total = OUTER_LEN + len(inner)
    if total > 0xFFFF:
        raise EncapError("too_big", f"{len(inner)}-byte packet does not fit in a tunnel datagram")
    ip = _ip_header(
        _addr(relay_addr), _addr(txr_addr), total, ttl=DEFAULT_TTL, tos=d.tos, ident=0, df=True
    )
    udp = _UDP.pack(flow_entropy(d.src, d.sport, d.dport), txr_port, UDP_HLEN + len(inner), 0)
    return ip + udp + inner


def decapsulate(outer: bytes) -> bytes:
    """The inner IPv4/UDP packet of a tunnel datagram; raises EncapError when malformed.

    Both layers must be well formed and their lengths agree (outer UDP payload == inner
    IPv4 total length), as the relay requires of datagrams from transceivers.
    """
    tunnel = parse_ipv4_udp(outer)
    inner = tunnel.payload
    try:
        parse_ipv4_udp(inner)
    except EncapError as exc:
        raise EncapError("bad_inner", f"tunnel payload: {exc.message}") from None
    if int.from_bytes(inner[2:4], "big") != len(inner):
        raise EncapError("bad_inner", "tunnel payload length != inner IPv4 total length")
    return inner
