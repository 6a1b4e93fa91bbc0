"""The client's address behind trusted proxies (`--trusted-proxy CIDR`, docs/security.md).

Behind a proxy (the fleet's front, a load balancer) every request's TCP peer is the proxy, so
whatever is keyed on the client's address (the transceiver's POST budget) would be shared by all
clients. A proxy says who its client was in `X-Forwarded-For`, appending its peer to the chain it
got. Anyone can send that header, so it is believed only as far as the chain of proxies we trust
reaches: only when the peer is a trusted proxy, and only from the right (the entries trusted
proxies appended) up to the first address that is not a trusted proxy. Everything left of that
was written by the client itself or by proxies we know nothing about.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

HEADER = "X-Forwarded-For"
# Entries looked at, from the right: more trusted hops than this is not a real chain. The front
# keeps at most MAX_HOPS - 1 of a chain it was given, so what it forwards stays under this.
MAX_HOPS = 16
MAX_ENTRY = 64  # characters: the longest IPv6 with a zone and a port is well below this
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
UNKNOWN = "?"  # no peer address (a Unix socket): one shared key, as before


class ClientAddress(NamedTuple):
    address: str  # the client's address, normalized (IPv4-mapped IPv6 as IPv4), or UNKNOWN
    malformed: bool  # a trusted peer's header was unusable: `address` is the peer's


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses: a /32 or /128) to networks; ValueError names a bad one.
    IPv4-mapped IPv6 ones become IPv4 (addresses are compared unmapped too)."""
    out: list[Network] = []
    for v in values:
        try:
            n = ipaddress.ip_network(v.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not an address or CIDR: {v!r}") from None
        if isinstance(n, ipaddress.IPv6Network) and n.prefixlen >= 96 and n.subnet_of(_MAPPED):
            mapped = n.network_address.ipv4_mapped
            assert mapped is not None
            n = ipaddress.IPv4Network((mapped, n.prefixlen - 96))
        out.append(n)
    return tuple(out)


def _unmap(ip: Address) -> Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_entry(entry: str) -> Address | None:
    """One X-Forwarded-For entry: an IPv4 or IPv6 address (no zone id), optionally `[v6]`,
    `[v6]:port` or `v4:port` (some proxies append their peer's port); None if anything else."""
    s = entry.strip()
    if not s or len(s) > MAX_ENTRY or "%" in s:  # no zone ids: nothing to key a client on
        return None
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit() and len(rest) <= 6)):
            return None
        s = host
        if "." in s and ":" not in s:  # "[1.2.3.4]" is not a thing
            return None
    elif s.count(":") == 1:  # IPv4 with a port
        s, _, port = s.partition(":")
        if not (port.isdigit() and len(port) <= 5):
            return None
    try:
        return _unmap(ipaddress.ip_address(s))
    except ValueError:
        return None


def _peer_ip(peer: str) -> Address | None:
    """The TCP peer's address (request.remote), its zone id left out; None if it is none."""
    try:
        return _unmap(ipaddress.ip_address(peer.split("%", 1)[0]))
    except ValueError:
        return None


def _trusted(ip: Address, trusted: Sequence[Network]) -> bool:
    return any(ip.version == n.version and ip in n for n in trusted)


def client_address(
    peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]
) -> ClientAddress:
    """The address to key a request on: `peer` (the TCP peer, request.remote) unless it is in
    `trusted`; then, from `forwarded` (the X-Forwarded-For header values, in order) walked from
    the right, the first entry that is not itself a trusted proxy. A trusted peer without the
    header made the request itself (its own address); a chain of trusted proxies only, its
    leftmost. A malformed entry met on the walk, an empty header or more than MAX_HOPS trusted
    hops: the peer's address, and `malformed` set (the caller counts it)."""
    if peer is None:
        return ClientAddress(UNKNOWN, False)
    peer_ip = _peer_ip(peer)
    if peer_ip is None:
        return ClientAddress(peer, False)
    if not trusted or not _trusted(peer_ip, trusted):
        return ClientAddress(str(peer_ip), False)
    if not forwarded:
        return ClientAddress(str(peer_ip), False)
    # Only the rightmost MAX_HOPS + 1 entries can matter; never split a huge header fully.
    entries = ",".join(forwarded).rsplit(",", MAX_HOPS)
    walked = 0
    last: Address | None = None
    for entry in reversed(entries):
        if walked == MAX_HOPS:
            return ClientAddress(str(peer_ip), True)  # longer than any real chain
        walked += 1
        ip = parse_entry(entry)
        if ip is None:
            return ClientAddress(str(peer_ip), True)
        if not _trusted(ip, trusted):
            return ClientAddress(str(ip), False)
        last = ip
    assert last is not None  # rsplit gives at least one entry, and an empty one is malformed
    return ClientAddress(str(last), False)


def forward_chain(peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]) -> str:
    """The X-Forwarded-For a proxy (the front) sends on: `peer` appended to the chain it got if
    `peer` is a trusted proxy (a CDN or load balancer in front; at most MAX_HOPS - 1 entries of
    it, the rightmost, are kept: the rest cannot matter), else `peer` alone (a client's own
    header is dropped, so it cannot choose the address it is keyed on). "" when there is no peer
    address to append (then the header is not sent)."""
    peer_ip = _peer_ip(peer) if peer is not None else None
    if peer_ip is None:
        return ""
    mine = str(peer_ip)
    if not forwarded or not _trusted(peer_ip, trusted):
        return mine
    kept = [e.strip() for e in ",".join(forwarded).rsplit(",", MAX_HOPS - 1)[-(MAX_HOPS - 1) :]]
    kept = [e if len(e) <= MAX_ENTRY else "unknown" for e in kept]  # bounded; still malformed
    return ", ".join([*kept, mine])
