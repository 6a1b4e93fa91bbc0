"""The tunnel layer (transceiver/tunnel.py) and the header bytes it takes from wire.encap: the
precomputed reply header equals the generic builder, the one checksum equals RFC 1071's word
loop, odd inbound packets take the full parse, and unwrap/path_of count what is not ours."""

from __future__ import annotations

import random
import struct

from transceiver import drops
from transceiver.ice import IceLiteAgent
from transceiver.tunnel import TunnelLayer
from wire import encap

VIP = ("198.18.0.10", 3478)
CLIENT = ("198.18.1.1", 5555)


def rfc1071(data: bytes) -> int:
    """The Internet checksum exactly as RFC 1071 §4.1 computes it: 16-bit words, end carry."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_one_checksum_equals_the_rfc1071_word_loop() -> None:
    rng = random.Random(1071)
    samples = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(3000)]
    # Odd lengths, all zeros, all ones, and sums that fold to 0xFFFF (checksum 0).
    samples += [b"", b"\x00", b"\x00" * 7, b"\xff", b"\xff" * 2, b"\xff" * 9, b"\x00\x01\xff\xfe"]
    samples += [bytes([rng.choice((0, 0xFF))]) * n for n in range(1, 64)]
    for data in samples:
        assert encap.checksum(data) == rfc1071(data), data.hex()


def test_path_header_equals_the_generic_builder() -> None:
    rng = random.Random(7)
    for _ in range(500):
        vip = (f"198.18.{rng.randrange(256)}.{rng.randrange(256)}", rng.randrange(65536))
        client = (".".join(str(rng.randrange(256)) for _ in range(4)), rng.randrange(65536))
        payload = rng.randbytes(rng.randrange(0, 1400))
        packet = encap.ipv4_udp(vip[0], vip[1], client[0], client[1], payload)
        assert encap.PathHeader(vip, client).wrap(payload) == packet
        assert encap.inbound_key(packet) == encap.path_key(vip, client)
    for payload in (b"", b"\xff" * 11, bytes(7)):  # checksum folding edge cases
        vip, client = ("0.0.0.1", 0), ("0.0.0.0", 0)
        assert encap.PathHeader(vip, client).wrap(payload) == encap.ipv4_udp(*vip, *client, payload)


def test_inbound_key_leaves_odd_packets_to_the_full_parse() -> None:
    good = encap.ipv4_udp(*CLIENT, *VIP, b"\x80" + bytes(30))
    assert encap.inbound_key(good) == encap.path_key(CLIENT, VIP)
    fragment = good[:6] + b"\x20\x00" + good[8:]
    options = b"\x46" + good[1:]
    tcp = good[:9] + b"\x06" + good[10:]
    padded = good + b"\x00\x00"
    bad_udp_len = good[:24] + b"\x00\x09" + good[26:]
    for packet in (fragment, options, tcp, padded, bad_udp_len, good[:27], b""):
        assert encap.inbound_key(packet) is None


RELAY = "10.0.0.1"


def make_layer(vips=(VIP,)) -> tuple[TunnelLayer, list[str], list[tuple[bytes, tuple]]]:
    dropped: list[str] = []
    sent: list[tuple[bytes, tuple]] = []
    layer = TunnelLayer(
        vips=vips,
        drop=dropped.append,
        sendto=lambda data, dest: sent.append((data, dest)),
        relay_tunnel_port=6081,
        relays=[RELAY],
    )
    return layer, dropped, sent


def test_unwrap_gives_the_path_key_and_payload_or_counts() -> None:
    layer, dropped, _ = make_layer()
    plain = encap.ipv4_udp(*CLIENT, *VIP, b"\x16hello")
    assert layer.unwrap(plain, RELAY) == (encap.path_key(CLIENT, VIP), b"\x16hello")
    # Ethernet-style padding is not plain, but the full parse still finds the same path.
    padded = plain + b"\x00\x00"
    assert layer.unwrap(padded, RELAY) == (encap.path_key(CLIENT, VIP), b"\x16hello")
    assert dropped == []
    for bad in (b"\x45" + bytes(30), b"\x45", plain[:-1], b"\x46" + plain[1:]):
        assert layer.unwrap(bad, RELAY) is None
    assert dropped == [drops.TUNNEL_BAD_INNER] * 4
    # From a source that is not a known relay: dropped before it is read, whatever it holds.
    dropped.clear()
    assert layer.unwrap(plain, "10.9.9.9") is None and dropped == [drops.TUNNEL_UNKNOWN_RELAY]
    layer.set_relays(["10.9.9.9"])  # the registry's set changed: the new set, whole
    assert layer.unwrap(plain, "10.9.9.9") is not None
    assert layer.unwrap(plain, RELAY) is None


def test_path_of_checks_the_vip_and_routes_wrap_replies() -> None:
    layer, dropped, sent = make_layer()
    path = layer.path_of(encap.path_key(CLIENT, VIP))
    assert path is not None and path.client == CLIENT and path.vip == VIP
    assert layer.path_of(encap.path_key(CLIENT, ("198.18.0.99", 3478))) is None
    assert dropped == [drops.TUNNEL_FOREIGN_VIP]
    agent = IceLiteAgent(local_username="A" * 24, candidates=[])
    route = layer.route(path, encap.path_key(CLIENT, VIP), agent, "10.0.0.1")
    route.send(b"\x17reply")
    route.relay = "10.0.0.2"  # a later datagram came through another relay
    route.send(b"\x17again")
    assert [dest for _, dest in sent] == [("10.0.0.1", 6081), ("10.0.0.2", 6081)]
    assert sent[0][0] == encap.ipv4_udp(*VIP, *CLIENT, b"\x17reply")
    # No VIPs configured (direct mode): nothing tunneled is ours.
    direct, dropped, _ = make_layer(vips=())
    assert direct.path_of(encap.path_key(CLIENT, VIP)) is None
    assert dropped == [drops.TUNNEL_FOREIGN_VIP]


def test_paths_knows_the_call_only_by_protocol() -> None:
    """paths.py (and the tunnel layer on it) never import ice.py, which builds on them."""
    import ast
    from pathlib import Path as FsPath

    import transceiver.paths
    import transceiver.tunnel

    for module in (transceiver.paths, transceiver.tunnel):
        tree = ast.parse(FsPath(module.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "transceiver.ice" not in imported, module.__name__
