"""IPv6/UDP building and parsing, and IPv6 packets in the (IPv4) relay tunnel."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import encap
from wire.encap import Datagram, EncapError

addrs6 = st.integers(1, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
addrs4 = st.integers(1, 0xFFFFFFFE).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(1, 65535)
C, V = "2001:db8:1::10", "2001:db8::1"


@settings(deadline=None)
@given(
    src=addrs6,
    sport=ports,
    dst=addrs6,
    dport=ports,
    payload=st.binary(max_size=300),
    tclass=st.integers(0, 255),
    hops=st.integers(1, 255),
)
def test_ipv6_udp_round_trip(
    src: str, sport: int, dst: str, dport: int, payload: bytes, tclass: int, hops: int
) -> None:
    pkt = encap.ipv6_udp(src, sport, dst, dport, payload, tclass=tclass, hop_limit=hops)
    assert len(pkt) == 48 + len(payload)
    got = encap.parse_ipv6_udp(pkt, verify_checksums=True)
    assert got == Datagram(src, sport, dst, dport, payload, tclass, hops)
    assert encap.parse_udp(pkt) == got
    assert encap.PathHeader((src, sport), (dst, dport)).wrap(payload) == encap.ipv6_udp(
        src, sport, dst, dport, payload
    )


@settings(deadline=None)
@given(
    src=addrs6,
    sport=ports,
    vip=addrs6,
    vport=ports,
    payload=st.binary(max_size=200),
    relay=addrs4,
    txr=addrs4,
    tport=ports,
)
def test_encapsulate_decapsulate6(
    src: str, sport: int, vip: str, vport: int, payload: bytes, relay: str, txr: str, tport: int
) -> None:
    inner = encap.ipv6_udp(src, sport, vip, vport, payload)
    outer = encap.encapsulate(inner, relay, txr, tport)
    assert encap.decapsulate(outer) == inner
    o = encap.parse_ipv4_udp(outer, verify_checksums=True)
    assert (o.src, o.dst, o.dport, o.ttl) == (relay, txr, tport, 64)
    assert o.sport == encap.flow_entropy(src, sport, vport) and o.sport >= 0x8000
    assert o.payload[0] >> 4 == 6


def test_checksum_matches_a_hand_computed_packet() -> None:
    # RFC 8200 §8.1 pseudo header, summed word by word independently of encap.checksum
    pkt = encap.ipv6_udp("2001:db8::1", 1000, "2001:db8::2", 2000, b"hi")
    words = [0x2001, 0x0DB8, 0, 0, 0, 0, 0, 1, 0x2001, 0x0DB8, 0, 0, 0, 0, 0, 2]
    words += [0, 10, 0, 17, 1000, 2000, 10, 0x6869]
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack(">H", pkt[46:48])[0] == (~total & 0xFFFF)
    assert pkt[:8] == bytes([0x60, 0, 0, 0, 0, 10, 17, 64])


def test_entropy_folds_the_four_words() -> None:
    # 2001:db8:: xor-folded is 0x20010db8: the same port as that IPv4 address
    assert encap.flow_entropy("2001:db8::", 5, 6) == encap.flow_entropy("32.1.13.184", 5, 6)
    assert encap.flow_entropy("0:0:0:1:0:0:0:1", 5, 6) == encap.flow_entropy("0.0.0.0", 5, 6)


def _bad(pkt: bytes, reason: str) -> None:
    with pytest.raises(EncapError) as err:
        encap.parse_ipv6_udp(pkt, verify_checksums=True)
    assert err.value.reason == reason


GOOD = encap.ipv6_udp(C, 5000, V, 3478, b"payload!")


@pytest.mark.parametrize("cut", range(48))
def test_truncated_headers(cut: int) -> None:
    _bad(GOOD[:cut], "truncated")


def test_bad_inputs() -> None:
    _bad(b"\x45" + GOOD[1:], "not_ipv6")
    for nh, reason in (
        (0, "ext_headers"),
        (43, "ext_headers"),
        (60, "ext_headers"),
        (44, "fragment"),
        (6, "not_udp"),
        (58, "not_udp"),
    ):
        _bad(GOOD[:6] + bytes([nh]) + GOOD[7:], reason)
    _bad(GOOD[:4] + (100).to_bytes(2, "big") + GOOD[6:], "truncated")
    _bad(GOOD[:4] + (7).to_bytes(2, "big") + GOOD[6:47], "bad_ip_len")
    _bad(GOOD[:44] + (9).to_bytes(2, "big") + GOOD[46:], "bad_udp_len")
    _bad(GOOD[:46] + b"\x00\x00" + GOOD[48:], "bad_checksum")  # 0: not allowed over IPv6
    _bad(GOOD[:-1] + bytes([GOOD[-1] ^ 1]), "bad_checksum")
    # padding after the payload length is ignored
    assert encap.parse_ipv6_udp(GOOD + bytes(6), verify_checksums=True).payload == b"payload!"


def test_decapsulate_refuses_bad_inner6() -> None:
    inner = encap.ipv6_udp(V, 3478, C, 5000, b"x")
    ok = encap.ipv4_udp("198.18.2.2", 5000, "198.18.0.2", 6080, inner)
    assert encap.decapsulate(ok) == inner
    for bad in (inner[:6] + b"\x2c" + inner[7:], inner[:4] + b"\x00\x08" + inner[6:-1], inner[:44]):
        with pytest.raises(EncapError) as err:
            encap.decapsulate(encap.ipv4_udp("198.18.2.2", 5000, "198.18.0.2", 6080, bad))
        assert err.value.reason == "bad_inner"


def test_forward_hop6() -> None:
    assert encap.forward_hop(GOOD)[7] == 63
    for hops in (0, 1):
        with pytest.raises(EncapError) as err:
            encap.forward_hop(GOOD[:7] + bytes([hops]) + GOOD[8:])
        assert err.value.reason == "ttl_expired"


def test_inbound_key6() -> None:
    assert encap.inbound_key(GOOD) == encap.path_key((C, 5000), (V, 3478))
    assert len(encap.inbound_key(GOOD) or b"") == 36
    assert encap.inbound_key(GOOD + b"\x00") is None  # lengths must be the packet's
    assert encap.inbound_key(GOOD[:6] + b"\x00" + GOOD[7:]) is None  # an extension header
    assert encap.inbound_key(GOOD[:47]) is None
