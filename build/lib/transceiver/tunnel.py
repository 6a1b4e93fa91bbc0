"""The mux's per-path tunnel fast lane: wrap replies and recognise inbound packets cheaply.

wire.encap builds and parses tunnel packets generically (string addresses, checksums summed
16 bits at a time), which costs more than the SRTP work for a 100-byte Opus packet. For one
tunneled path everything but the lengths and checksums is fixed, so:

- `PathHeader.wrap()` prepends a precomputed IPv4+UDP header (docs/wire-format.md §3,
  transceiver -> relay: IHL 5, TTL 64, id 0, no DF, correct IPv4 and UDP checksums; the same
  bytes wire.encap.ipv4_udp makes, which a test checks). The checksums use the fact that the
  ones' complement sum of 16-bit words is the packet read as one big integer modulo 0xFFFF
  (2^16 = 1 mod 0xFFFF), so one int.from_bytes() replaces the word loop.
- `inbound_key()` names the path of an inbound tunnel datagram by its raw inner addresses and
  ports (12 bytes of the header), so the mux can find a bound path without building strings.
"""

from __future__ import annotations

import socket
import struct

from transceiver.paths import Addr

IP_HLEN = 20
UDP_HLEN = 8
PROTO_UDP = 17
TTL = 64
_HEADER = struct.Struct("!BBHHHBBH4s4sHHHH")
_LENGTHS = struct.Struct("!H")


def _fold(value: int) -> int:
    """Ones' complement sum (1..0xFFFF) of words whose plain sum or big-int value is `value`."""
    s = value % 0xFFFF
    return s or 0xFFFF


def _words(data: bytes) -> int:
    return int.from_bytes(data + b"\x00" if len(data) & 1 else data, "big")


def path_key(client: Addr, vip: Addr) -> bytes:
    """Inner source address, destination address, source port, destination port: as on the wire."""
    return (
        socket.inet_aton(client[0])
        + socket.inet_aton(vip[0])
        + struct.pack("!HH", client[1], vip[1])
    )


def inbound_key(data: bytes) -> bytes | None:
    """The path key of a tunnel datagram whose inner IPv4/UDP header is plain and consistent.

    None sends the datagram down the mux's full parse (wire.encap), which counts what is wrong.
    """
    if len(data) < IP_HLEN + UDP_HLEN or data[0] != 0x45 or data[9] != PROTO_UDP:
        return None
    if data[6] & 0x3F or data[7]:  # MF flag or a fragment offset
        return None
    total = (data[2] << 8) | data[3]
    if total != len(data) or ((data[24] << 8) | data[25]) != total - IP_HLEN:
        return None
    return data[12:24]


class PathHeader:
    """The IPv4+UDP header of every packet sent on one tunneled path, VIP:port -> client:port."""

    def __init__(self, vip: Addr, client: Addr) -> None:
        src, dst = socket.inet_aton(vip[0]), socket.inet_aton(client[0])
        self._fixed = _HEADER.pack(
            0x45, 0, 0, 0, 0, TTL, PROTO_UDP, 0, src, dst, vip[1], client[1], 0, 0
        )
        # Sums of the words that never change: the IPv4 header without total length and
        # checksum, and the UDP pseudo header + header without the two lengths and checksum.
        self._ip_sum = _words(self._fixed[:IP_HLEN])
        self._udp_sum = _words(src + dst) + PROTO_UDP + vip[1] + client[1]

    def wrap(self, payload: bytes) -> bytes:
        ulen = UDP_HLEN + len(payload)
        total = IP_HLEN + ulen
        ip_csum = 0xFFFF - _fold(self._ip_sum + total)
        # the UDP length counts twice: in the pseudo header and in the UDP header
        udp_csum = 0xFFFF - _fold(self._udp_sum + 2 * ulen + _words(payload))
        header = bytearray(self._fixed)
        header[2:4] = _LENGTHS.pack(total)
        header[10:12] = _LENGTHS.pack(ip_csum)
        header[24:26] = _LENGTHS.pack(ulen)
        header[26:28] = _LENGTHS.pack(udp_csum or 0xFFFF)  # 0 would mean "no checksum"
        header += payload
        return bytes(header)
