"""Deterministic test vectors shared by the Python and the BPF implementations.

`python -m tests.vectors.generate > tests/vectors/wire.json` (from the checkout) regenerates the
file; tests check that the file equals this output, so neither side drifts. All bytes are hex
strings; STUN `packet`s are UDP payloads, `inner`/`outer`/`tunnel`/`forwarded` are IP packets
without Ethernet (IPv4 or IPv6 by their first nibble; the outer and tunnel ones always IPv4).
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from wire import encap, stun, ufrag
from wire.defaults import RELAY_TUNNEL_PORT
from wire.siphash import siphash24

REF_KEY = bytes(range(16))  # the SipHash paper's key
KEY_A = bytes.fromhex("5ec2e7a1d04b3f96a8173c0d2e4f6b81")
KEY_B = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
CLIENT_UFRAG = "cl1E"

ATTR_PRIORITY = 0x0024
ATTR_ICE_CONTROLLING = 0x802A
ATTR_USE_CANDIDATE = 0x0025
ATTR_SOFTWARE = 0x8022
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_FINGERPRINT = 0x8028
TID = bytes.fromhex("0102030405060708090a0b0c")
EPOCH = 0x9A5  # the epoch every fixed mint carries (a relay under test is set to it)
NONCE = bytes.fromhex("01020304")


def _siphash() -> list[dict[str, Any]]:
    cases = [(REF_KEY, bytes(range(n))) for n in range(17)]
    cases += [(REF_KEY, bytes(range(63))), (KEY_A, b"\x11" + bytes(11)), (KEY_B, b"\xff" * 12)]
    return [{"key": k.hex(), "msg": m.hex(), "out": f"{siphash24(k, m):016x}"} for k, m in cases]


_MINTS = [
    (1, KEY_A, 1, 7, NONCE, EPOCH),
    (0, KEY_A, 0, 0, bytes(4), 0),
    (15, KEY_B, 0xFFFF, 0xFFFFFFFF, b"\x0f" + b"\xff" * 3, 0xFFF),
    (2, KEY_B, 300, 123456, bytes.fromhex("0befbeff"), 0xFBE),  # '+' and '/' in the text
    (1, REF_KEY, 42, 65536, bytes.fromhex("05a5a5a5"), 0x5A5),
]


def _ufrag() -> list[dict[str, Any]]:
    return [
        {
            "key_id": kid,
            "key": key.hex(),
            "cluster": cluster,
            "transceiver": txr,
            "epoch": epoch,
            "nonce": nonce.hex(),
            "ufrag": ufrag.mint(kid, key, cluster, txr, nonce, epoch),
        }
        for kid, key, cluster, txr, nonce, epoch in _MINTS
    ]


def _ufrag_epoch() -> list[dict[str, Any]]:
    """The lifetime rule (bpf/ufrag.h ufrag_epoch_fresh, wire.ufrag.epoch_fresh), wrap included."""
    cases = [
        (EPOCH, EPOCH, 144),  # minted this epoch
        (EPOCH, EPOCH + 144, 144),  # as old as the lifetime
        (EPOCH, EPOCH + 145, 144),  # one epoch of slack: the minter's clock behind
        (EPOCH, EPOCH + 146, 144),  # too old
        (EPOCH, EPOCH - 1, 144),  # one epoch ahead: the minter's clock ahead
        (EPOCH, EPOCH - 2, 144),  # two ahead: refused
        (0xFFF, 0x004, 10),  # across the wrap: 5 old
        (0xFF0, 0x010, 10),  # across the wrap: 32 old
        (0, 0xFFF, 10),  # 4095 old reads as one ahead: fresh
        (7, 7 + 2048, 4000),  # a lifetime longer than the cycle accepts nearly everything
        (5, 7, 1),  # the shortest lifetime: 1 epoch, and the slack
        (5, 8, 1),
    ]
    return [
        {
            "epoch": e % ufrag.EPOCH_MOD,
            "now": n % ufrag.EPOCH_MOD,
            "max_age": m,
            "fresh": ufrag.epoch_fresh(e % ufrag.EPOCH_MOD, n % ufrag.EPOCH_MOD, m),
        }
        for e, n, m in cases
    ]


def _with_version(version: int, key: bytes) -> str:
    """A correctly tagged ufrag whose version nibble is `version` (so only the version is wrong)."""
    good = base64.b64decode(ufrag.mint(1, KEY_A, 1, 7, NONCE, EPOCH))
    signed = bytes([(version << 4) | 1]) + good[1:12]
    return base64.b64encode(signed + ufrag.compute_tag(key, signed)).decode()


def _flip(text: str, index: int) -> str:
    """Change one base64 character (so exactly one 6-bit group differs)."""
    c = text[index]
    return text[:index] + ("B" if c == "A" else "A") + text[index + 1 :]


def _ufrag_invalid() -> list[dict[str, Any]]:
    good = ufrag.mint(1, KEY_A, 1, 7, NONCE, EPOCH)
    a = {"1": KEY_A.hex()}
    cases = [
        (good[:23], a, "bad_ufrag"),  # one short
        (good + "A", a, "bad_ufrag"),  # one long
        ("", a, "bad_ufrag"),
        (good[:22] + "==", a, "bad_ufrag"),  # padding is not in the alphabet
        (good[:10] + "-" + good[11:], a, "bad_ufrag"),  # base64url character
        (good[:23] + ".", a, "bad_ufrag"),
        (good[:5] + " " + good[6:], a, "bad_ufrag"),
        (_with_version(0, KEY_A), a, "bad_ufrag"),
        (_with_version(1, KEY_A), a, "bad_ufrag"),  # version 1 is retired
        (_with_version(3, KEY_A), a, "bad_ufrag"),
        (_with_version(15, KEY_A), {}, "bad_ufrag"),  # version is checked before the key
        (good, {}, "unknown_key"),
        (good, {"0": KEY_A.hex(), "2": KEY_A.hex()}, "unknown_key"),
        (good, {"1": KEY_B.hex()}, "bad_tag"),  # right format, other key
        (_flip(good, 23), a, "bad_tag"),  # last tag bits forged
        (_flip(good, 16), a, "bad_tag"),  # first tag bits forged
        (_flip(good, 3), a, "bad_tag"),  # cluster changed, tag kept
        (_flip(good, 12), a, "bad_tag"),  # nonce changed, tag kept
        (_flip(good, 10), a, "bad_tag"),  # epoch changed, tag kept
    ]
    return [{"ufrag": u, "keys": k, "reason": r} for u, k, r in cases]


def _encap() -> list[dict[str, Any]]:
    stun_payload = stun.build_binding_request(
        ufrag.mint(1, KEY_A, 1, 7, NONCE, EPOCH) + ":" + CLIENT_UFRAG,
        transaction_id=TID,
    )
    cases = [
        (
            "198.18.1.10",
            50000,
            "198.18.0.1",
            3478,
            stun_payload,
            0,
            "198.18.0.2",
            "198.18.2.2",
            5000,
        ),
        (
            "203.0.113.77",
            61234,
            "198.18.0.1",
            443,
            b"\x80\x6f" + bytes(170),
            0xB8,
            "198.18.0.2",
            "198.18.2.3",
            6000,
        ),
        (
            "255.255.255.254",
            65535,
            "198.18.0.1",
            1,
            b"\x16\xfe\xfd" + bytes(60),
            0x2E,
            "198.18.0.2",
            "198.18.2.2",
            65535,
        ),
        ("1.0.0.0", 1, "198.19.255.1", 65535, b"", 0, "198.19.0.2", "198.18.2.2", 5000),
    ]
    out = []
    for client, cport, vip, vport, payload, tos, relay, txr, tport in cases:
        inner = encap.ipv4_udp(client, cport, vip, vport, payload, ttl=61, tos=tos, ident=0x1234)
        forwarded = encap.forward_hop(inner)
        out.append(
            {
                "inner": inner.hex(),
                "relay_addr": relay,
                "txr_addr": txr,
                "txr_port": tport,
                "client_addr": client,
                "client_port": cport,
                "vip_port": vport,
                "entropy": encap.flow_entropy(client, cport, vport),
                "forwarded": forwarded.hex(),
                "outer": encap.encapsulate(forwarded, relay, txr, tport).hex(),
            }
        )
    return out


def _encap6() -> list[dict[str, Any]]:
    """IPv6 clients (§3): the client's IPv6/UDP packet, one hop later (hop limit - 1, nothing
    else changes), in the IPv4 tunnel."""
    stun_payload = stun.build_binding_request(
        ufrag.mint(1, KEY_A, 1, 7, NONCE, EPOCH) + ":" + CLIENT_UFRAG,
        transaction_id=TID,
    )
    cases = [
        (
            "2001:db8:1::10",
            50000,
            "2001:db8::1",
            3478,
            stun_payload,
            0,
            0,
            "198.18.0.2",
            "198.18.2.2",
            5000,
        ),
        (
            "2001:db8:ffff:1:2:3:4:5",
            61234,
            "2001:db8::1",
            443,
            b"\x80\x6f" + bytes(170),
            0xB8,
            0x12345,
            "198.18.0.2",
            "198.18.2.3",
            6000,
        ),
        (
            "fd00:ed6e::77",
            65535,
            "fd00:ed6e:100::1",
            1,
            b"\x16\xfe\xfd" + bytes(60),
            0x2E,
            0xFFFFF,
            "198.18.0.2",
            "198.18.2.2",
            65535,
        ),
        (
            "2001:db8::ffff:0:1",
            1,
            "2001:db8::1",
            65535,
            b"",
            0,
            0,
            "198.19.0.2",
            "198.18.2.2",
            5000,
        ),
    ]
    out = []
    for client, cport, vip, vport, payload, tclass, label, relay, txr, tport in cases:
        inner = encap.ipv6_udp(
            client, cport, vip, vport, payload, hop_limit=61, tclass=tclass, flow_label=label
        )
        forwarded = encap.forward_hop(inner)
        out.append(
            {
                "inner": inner.hex(),
                "relay_addr": relay,
                "txr_addr": txr,
                "txr_port": tport,
                "client_addr": client,
                "client_port": cport,
                "vip_addr": vip,
                "vip_port": vport,
                "entropy": encap.flow_entropy(client, cport, vport),
                "forwarded": forwarded.hex(),
                "outer": encap.encapsulate(forwarded, relay, txr, tport).hex(),
            }
        )
    return out


def _decap() -> list[dict[str, Any]]:
    """The other side (§3, transceiver -> relay), both families: the datagram a transceiver
    sends from its tunnel socket, and the inner packet the relay forwards (one hop less)."""
    cases = [
        (
            "198.18.2.2",
            5000,
            "198.18.0.2",
            "198.18.0.1",
            3478,
            "198.18.1.10",
            50000,
            b"\x80\x6f" + bytes(100),
        ),
        (
            "198.18.2.3",
            6000,
            "198.18.0.2",
            "2001:db8::1",
            3478,
            "2001:db8:1::10",
            50000,
            b"\x80\x6f" + bytes(100),
        ),
        (
            "198.18.2.2",
            65535,
            "198.18.0.2",
            "fd00:ed6e:100::1",
            443,
            "fd00:ed6e::77",
            1,
            b"\x17\xfe\xfd" + bytes(41),
        ),
        ("198.18.2.2", 5000, "198.18.0.2", "2001:db8::1", 1, "2001:db8:ffff:1:2:3:4:5", 65535, b""),
    ]
    out = []
    for txr, tport, relay, vip, vport, client, cport, payload in cases:
        inner = encap.udp_packet((vip, vport), (client, cport), payload)
        out.append(
            {
                "txr_addr": txr,
                "txr_port": tport,
                "relay_addr": relay,
                "relay_port": RELAY_TUNNEL_PORT,
                "vip_addr": vip,
                "vip_port": vport,
                "client_addr": client,
                "client_port": cport,
                "tunnel": encap.ipv4_udp(txr, tport, relay, RELAY_TUNNEL_PORT, inner).hex(),
                "forwarded": encap.forward_hop(inner).hex(),
            }
        )
    return out


def _stun() -> list[dict[str, Any]]:
    u = ufrag.mint(1, KEY_A, 1, 7, NONCE, EPOCH)
    user = f"{u}:{CLIENT_UFRAG}"
    ice = [
        (ATTR_PRIORITY, bytes.fromhex("6e7f1eff")),
        (ATTR_ICE_CONTROLLING, bytes.fromhex("1122334455667788")),
        (ATTR_USE_CANDIDATE, b""),
    ]
    tail = [
        (ATTR_MESSAGE_INTEGRITY, bytes(range(20))),
        (ATTR_FINGERPRINT, bytes.fromhex("deadbeef")),
    ]
    b = stun.build_binding_request
    only = b(user, transaction_id=TID)
    filler = [(ATTR_SOFTWARE, b"x")] * 15
    ok: list[bytes] = [
        only,
        b(user, transaction_id=TID, attrs_before=ice),  # USERNAME last
        b(user, transaction_id=TID, attrs_after=ice + tail),  # USERNAME first of many
        b(user, transaction_id=TID, attrs_before=[(ATTR_SOFTWARE, b"abc"), *ice], attrs_after=tail),
        b(f"{u}:x", transaction_id=TID),  # client ufrag needs padding
        b(f"{u}:", transaction_id=TID),  # 25 bytes: the shortest accepted
        b(user, transaction_id=TID, attrs_before=filler),  # USERNAME is the 16th attribute
        only + b"\x00" * 8,  # bytes after the message are ignored
    ]
    bad: list[tuple[bytes, str]] = [
        (b"\x80\x6f" + bytes(30), "not_stun"),  # RTP
        (b"\x16\xfe\xfd" + bytes(30), "not_stun"),  # DTLS
        (b"", "not_stun"),
        (only[:19], "truncated"),  # first byte 0/1 but shorter than a header
        (b"\x01", "truncated"),
        (only[:2] + b"\x00\x22" + only[4:], "not_stun"),  # length not a multiple of 4
        (b(user, transaction_id=TID, cookie=0x2112A443), "bad_cookie"),
        (only[:2] + b"\x00\x22\x21\x12\xa4\x43" + only[8:], "bad_cookie"),  # cookie first
        (only[:-4], "truncated"),  # header length past the payload
        (only[:2] + (len(only) - 20 + 4).to_bytes(2, "big") + only[4:], "truncated"),
        (
            stun.build_message(1, [(ATTR_PRIORITY, bytes(4))], transaction_id=TID)[:22]
            + b"\x00\x08"
            + bytes(4),
            "truncated",  # attribute length runs past the message
        ),
        (stun.build_message(0x0101, [(6, user.encode())], transaction_id=TID), "not_binding"),
        (stun.build_message(0x0011, [(6, user.encode())], transaction_id=TID), "not_binding"),
        (stun.build_message(1, ice + tail, transaction_id=TID), "no_username"),
        (stun.build_message(1, [], transaction_id=TID), "no_username"),
        (b(user, transaction_id=TID, attrs_before=[*filler, (ATTR_SOFTWARE, b"x")]), "no_username"),
        (b(u, transaction_id=TID), "bad_ufrag"),  # no ':' at all
        (b(u[:23] + ":" + CLIENT_UFRAG + "xx", transaction_id=TID), "bad_ufrag"),  # ':' at 23
        (b(f"{CLIENT_UFRAG}:{u}", transaction_id=TID), "bad_ufrag"),  # halves swapped
        (b("short:name", transaction_id=TID), "bad_ufrag"),
    ]
    vectors: list[dict[str, Any]] = [{"packet": p.hex(), "ufrag": u} for p in ok]
    vectors += [{"packet": p.hex(), "reason": r} for p, r in bad]
    return vectors


def generate() -> dict[str, Any]:
    """Every vector, deterministic: fixed keys, nonces, epochs and transaction ids."""
    return {
        "siphash": _siphash(),
        "ufrag": _ufrag(),
        "ufrag_invalid": _ufrag_invalid(),
        "ufrag_epoch": _ufrag_epoch(),
        "encap": _encap(),
        "encap6": _encap6(),
        "decap": _decap(),
        "stun": _stun(),
    }


def render() -> str:
    return json.dumps(generate(), indent=1) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
