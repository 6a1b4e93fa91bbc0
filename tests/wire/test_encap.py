"""IPv4/UDP building and parsing, and the relay tunnel."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import encap
from wire.encap import Datagram, EncapError

addrs = st.integers(1, 0xFFFFFFFE).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(1, 65535)


@settings(deadline=None)  # shared CI cores: no per-example time limit
@given(
    src=addrs,
    sport=ports,
    dst=addrs,
    dport=ports,
    payload=st.binary(max_size=300),
    tos=st.integers(0, 255),
    ttl=st.integers(1, 255),
)
def test_ipv4_udp_round_trip(
    src: str, sport: int, dst: str, dport: int, payload: bytes, tos: int, ttl: int
) -> None:
    pkt = encap.ipv4_udp(src, sport, dst, dport, payload, tos=tos, ttl=ttl)
    assert len(pkt) == 28 + len(payload)
    got = encap.parse_ipv4_udp(pkt, verify_checksums=True)
    assert got == Datagram(src, sport, dst, dport, payload, tos, ttl)
    assert encap.checksum(pkt[:20]) == 0


def test_checksums_match_a_hand_computed_packet() -> None:
    # RFC 768 pseudo-header sum over a tiny packet, computed independently of encap.checksum.
    pkt = encap.ipv4_udp("198.18.0.1", 1000, "198.18.0.2", 2000, b"hi", ident=7)
    words = [0xC612, 0x0001, 0xC612, 0x0002, 17, 10, 1000, 2000, 10, 0x6869]
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack(">H", pkt[26:28])[0] == (~total & 0xFFFF)
    assert pkt[:4] == bytes([0x45, 0, 0, 30]) and pkt[8] == 64 and pkt[9] == 17


@settings(deadline=None)  # shared CI cores: no per-example time limit
@given(
    src=addrs,
    sport=ports,
    vip=addrs,
    vport=ports,
    payload=st.binary(max_size=200),
    tos=st.integers(0, 255),
    relay=addrs,
    txr=addrs,
    tport=ports,
)
def test_encapsulate_decapsulate(
    src: str,
    sport: int,
    vip: str,
    vport: int,
    payload: bytes,
    tos: int,
    relay: str,
    txr: str,
    tport: int,
) -> None:
    inner = encap.ipv4_udp(src, sport, vip, vport, payload, tos=tos)
    outer = encap.encapsulate(inner, relay, txr, tport)
    assert encap.decapsulate(outer) == inner
    o = encap.parse_ipv4_udp(outer, verify_checksums=True)
    assert (o.src, o.dst, o.dport, o.tos, o.ttl) == (relay, txr, tport, tos, 64)
    assert o.sport == encap.flow_entropy(src, sport, vport) and o.sport >= 0x8000
    # DF set, id 0, UDP checksum 0.
    assert outer[4:8] == b"\x00\x00\x40\x00" and outer[26:28] == b"\x00\x00"


def test_flow_entropy_matches_the_spec_formula() -> None:
    a, cp, vp = 0xC6120A0B, 50000, 3478
    h = a ^ ((cp << 16) | vp)
    h ^= h >> 16
    h = (h * 0x7FEB352D) % 2**32
    h ^= h >> 15
    assert encap.flow_entropy(socket.inet_ntoa(a.to_bytes(4, "big")), cp, vp) == 0x8000 | (
        h & 0x7FFF
    )


def _bad(pkt: bytes, reason: str) -> None:
    with pytest.raises(EncapError) as err:
        encap.parse_ipv4_udp(pkt)
    assert err.value.reason == reason


def test_parse_errors() -> None:
    good = encap.ipv4_udp("198.18.0.1", 1, "198.18.0.2", 2, b"abcd")
    _bad(good[:19], "truncated")
    _bad(good[:-1], "truncated")
    _bad(b"\x65" + good[1:], "not_ipv4")
    _bad(b"\x46" + good[1:], "ip_options")
    _bad(good[:6] + b"\x20\x00" + good[8:], "fragment")  # MF
    _bad(good[:6] + b"\x00\x01" + good[8:], "fragment")  # offset
    _bad(good[:9] + b"\x06" + good[10:], "not_udp")
    _bad(good[:24] + b"\x00\x09" + good[26:], "bad_udp_len")
    with pytest.raises(EncapError) as err:
        encap.parse_ipv4_udp(good[:-1] + b"x", verify_checksums=True)
    assert err.value.reason == "bad_checksum"
    assert encap.parse_ipv4_udp(good + bytes(10)).payload == b"abcd"  # Ethernet padding


def test_decapsulate_rejects_bad_inner() -> None:
    inner = encap.ipv4_udp("198.18.0.1", 1, "198.18.0.2", 2, b"abcd")
    outer = encap.ipv4_udp("198.18.2.2", 5000, "198.18.0.9", 6080, inner[:-1] + b"")
    with pytest.raises(EncapError) as err:
        encap.decapsulate(outer)
    assert err.value.reason == "bad_inner"
    outer = encap.ipv4_udp("198.18.2.2", 5000, "198.18.0.9", 6080, inner + b"\x00")
    with pytest.raises(EncapError) as err:
        encap.decapsulate(outer)
    assert err.value.reason == "bad_inner"
    assert encap.decapsulate(encap.ipv4_udp("198.18.2.2", 5000, "198.18.0.9", 6080, inner)) == inner


def test_tunnel_header_builds_what_encapsulate_builds() -> None:
    rng = random.Random(7)
    for _ in range(300):
        client = (f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1, 65536))
        vip_port = rng.choice([3478, 443])
        payload = rng.randbytes(rng.randrange(0, 1400))
        tos = rng.choice([0, 0x2E, 0xB8, 0xFF])
        inner = encap.ipv4_udp(*client, "198.18.100.1", vip_port, payload, tos=tos)
        header = encap.TunnelHeader(
            "198.18.2.1", ("198.18.2.2", 5000), encap.flow_entropy(*client, vip_port)
        )
        assert header.wrap(inner, tos) == encap.encapsulate(inner, "198.18.2.1", "198.18.2.2", 5000)
