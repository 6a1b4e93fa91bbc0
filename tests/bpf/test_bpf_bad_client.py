"""Bad input from the client side: every malformed packet is a counted drop or a counted pass,
and a drop never touches the flow map (check() asserts it for every case)."""

from __future__ import annotations

import base64
import struct

from control.reasons import Reason
from tests.bpf.bpfharness import (
    CLIENT,
    CLIENT_PORT,
    KEY,
    KEY_ID,
    NEAR,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    Case,
    Relay,
    Setup,
    cases,
    check,
    client_frame,
    eth,
    tunnelled,
    with_flow,
    with_keys,
)
from wire.encap import checksum, ipv4_udp
from wire.stun import ATTR_USERNAME, build_binding_request, build_message
from wire.ufrag import mint

UFRAG = mint(KEY_ID, KEY, NEAR.cluster, NEAR.id, b"\x01\x02\x03\x04")
USERNAME = (UFRAG + ":cl1E").encode()
GOOD = build_binding_request(UFRAG + ":cl1E", attrs_before=[(0x0024, b"\x6e\x7f\x1e\xff")])


def drop(description: str, frame: bytes, reason: Reason, *setup: Setup) -> Case:
    """frame is dropped untouched, counted once under reason, the flow map left as it was."""
    return Case(description, frame, None, XDP_DROP, reason, setup=setup)


def passed(description: str, frame: bytes, reason: Reason, *setup: Setup) -> Case:
    """frame goes to the kernel untouched, counted once under reason."""
    return Case(description, frame, None, XDP_PASS, reason, setup=setup)


def routed(description: str, payload: bytes, *setup: Setup) -> Case:
    """A Binding request whose ufrag names NEAR: tunnelled there, the flow created."""
    frame = client_frame(payload)
    return Case(
        description,
        frame,
        tunnelled(frame, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=setup,
        learns=NEAR,
    )


def with_ip(packet: bytes, **fields: int) -> bytes:
    """Rewrite IPv4 header fields (frag_off, tot_len, options=<n words>) and fix the checksum."""
    hdr, rest = bytearray(packet[:20]), packet[20:]
    if "frag_off" in fields:
        hdr[6:8] = fields["frag_off"].to_bytes(2, "big")
    if words := fields.get("options", 0):
        hdr[0] = 0x45 + words
        hdr += b"\x01" * (4 * words)  # NOPs
        hdr[2:4] = (len(hdr) + len(rest)).to_bytes(2, "big")
    if "tot_len" in fields:
        hdr[2:4] = fields["tot_len"].to_bytes(2, "big")
    hdr[10:12] = b"\x00\x00"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + rest


def _with_field(message: bytes, at: int, value: int) -> bytes:
    """message with the 16-bit big-endian field at byte `at` set to value."""
    msg = bytearray(message)
    msg[at : at + 2] = value.to_bytes(2, "big")
    return bytes(msg)


def _overrunning_attributes() -> list[Case]:
    """An attribute whose length runs past the message: truncated, wherever it sits."""
    out = []
    for before in ([], [(0x0024, b"\x00\x00\x00\x01")]):
        msg = build_message(0x0001, [*before, (ATTR_USERNAME, USERNAME)])
        at = 20 + sum(4 + len(v) for _, v in before) + 2
        where = "USERNAME after another attribute" if before else "USERNAME first"
        for bogus in (len(USERNAME) + 4, 0x0FFF, 0xFFFF):  # value longer than what is left
            frame = client_frame(_with_field(msg, at, bogus))
            out.append(drop(f"{where}, length {bogus:#06x}", frame, Reason.DROP_TRUNCATED))
    # an earlier attribute that overruns hides everything after it
    frame = client_frame(_with_field(GOOD, 22, len(GOOD) - 20 - 4 + 1))
    out.append(drop("an earlier attribute overruns the message", frame, Reason.DROP_TRUNCATED))
    return out


def _cut_frames() -> list[Case]:
    """The frame cut short: IPv4 and UDP lengths now claim more than arrived."""
    frame = client_frame(GOOD)
    return [
        passed(
            f"frame cut to {cut} bytes: no UDP ports, not ours", frame[:cut], Reason.PASS_NOT_OURS
        )
        if cut < 14 + 20 + 8
        else drop(f"frame cut to {cut} bytes", frame[:cut], Reason.DROP_TRUNCATED)
        for cut in range(14, len(frame))
    ]


FILLER = [(0x8022, b"x")] * 15  # SOFTWARE attributes before USERNAME
WITH_KEY_9 = with_keys({KEY_ID: KEY, 9: bytes(range(16))})
FORGED_RAW = bytearray(base64.b64decode(UFRAG))
FORGED_RAW[4] ^= 0x01  # a different transceiver under the original tag
MOVED_UFRAG = base64.b64encode(bytes(FORGED_RAW)).decode()
PACKET = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], b"\x80" * 12)
PACKET_RIGHT_UDP_LEN = len(PACKET) - 20
ARP = eth(bytes.fromhex("0001080006040001") + bytes(20), ethertype=0x0806)
IPV6 = eth(bytes([0x60]) + bytes(47), ethertype=0x86DD)
VLAN = eth(bytes(4) + client_frame(GOOD)[12:], ethertype=0x8100)
UDP_TO_VIP = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], GOOD)
TCP_TO_VIP = bytes(UDP_TO_VIP[:9]) + b"\x06" + UDP_TO_VIP[10:]


@cases(
    routed("the good packet every mutation starts from is routed", GOOD),
    *(
        drop(f"STUN message cut to {cut} bytes", client_frame(GOOD[:cut]), Reason.DROP_TRUNCATED)
        for cut in range(1, len(GOOD))
    ),
    *_cut_frames(),
    *_overrunning_attributes(),
    drop(
        "STUN header length past the payload",
        client_frame(_with_field(GOOD, 2, len(GOOD) - 20 + 4)),
        Reason.DROP_TRUNCATED,
    ),
    drop(
        "STUN header length shorter than the payload hides USERNAME",
        client_frame(_with_field(GOOD, 2, 8)),  # only the first attribute is inside the message
        Reason.DROP_NO_USERNAME,
    ),
    routed(
        "USERNAME as the 16th attribute is found",
        build_message(0x0001, [*FILLER, (ATTR_USERNAME, USERNAME)]),
    ),
    drop(
        "USERNAME as the 17th attribute is past the walk's bound",
        client_frame(build_message(0x0001, [*FILLER, FILLER[0], (ATTR_USERNAME, USERNAME)])),
        Reason.DROP_NO_USERNAME,
    ),
    drop("no attributes at all", client_frame(build_message(0x0001, [])), Reason.DROP_NO_USERNAME),
    drop(
        "attributes, but no USERNAME",
        client_frame(build_message(0x0001, [(0x0024, b"abcd")])),
        Reason.DROP_NO_USERNAME,
    ),
    drop(
        "wrong magic cookie",
        client_frame(GOOD[:7] + bytes([GOOD[7] ^ 1]) + GOOD[8:]),
        Reason.DROP_BAD_COOKIE,
    ),
    drop(
        "a zero cookie after a STUN-like first byte",
        client_frame(b"\x01" + bytes(19)),
        Reason.DROP_BAD_COOKIE,
    ),
    *(
        drop(
            f"bad ufrag: {name}",
            client_frame(build_binding_request(username)),
            Reason.DROP_BAD_UFRAG,
        )
        for name, username in {
            "no ':'": UFRAG,
            "':' at 25": UFRAG + "x:cl1E",
            "':' at 23": UFRAG[:23] + ":cl1E",
            "'-' is not in the alphabet": UFRAG[:10] + "-" + UFRAG[11:] + ":cl1E",
            "padding": UFRAG[:22] + "==" + ":cl1E",
            "two UTF-8 bytes in place of one character": UFRAG[:5] + "\u00e9" + UFRAG[7:] + ":cl1E",
            "version 0": "A" + UFRAG[1:] + ":cl1E",
            "version 1 (retired)": "E" + UFRAG[1:] + ":cl1E",
            "version 3": "M" + UFRAG[1:] + ":cl1E",
            "empty": ":cl1E",
        }.items()
    ),
    drop(
        "forged tag: the right layout under the wrong key",
        client_frame(
            build_binding_request(mint(KEY_ID, bytes(16), NEAR.cluster, NEAR.id) + ":cl1E")
        ),
        Reason.DROP_BAD_TAG,
    ),
    drop(
        "forged tag: another transceiver under the original tag",
        client_frame(build_binding_request(MOVED_UFRAG + ":cl1E")),
        Reason.DROP_BAD_TAG,
    ),
    drop(
        "a key id that was never loaded",
        client_frame(build_binding_request(mint(KEY_ID + 1, KEY, NEAR.cluster, NEAR.id) + ":cl1E")),
        Reason.DROP_UNKNOWN_KEY,
    ),
    drop(
        "a key that was unloaded (live 0)",
        client_frame(build_binding_request(UFRAG + ":cl1E")),
        Reason.DROP_UNKNOWN_KEY,
        with_keys({}),
    ),
    routed(
        "two live keys: a ufrag under the first",
        build_binding_request(UFRAG + ":a"),
        WITH_KEY_9,
    ),
    routed(
        "two live keys: a ufrag under the second",
        build_binding_request(mint(9, bytes(range(16)), NEAR.cluster, NEAR.id) + ":a"),
        WITH_KEY_9,
    ),
    drop(
        "IPv4 options, even on a known flow",
        eth(with_ip(ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], b"\x80rtp"), options=1)),
        Reason.DROP_IP_OPTIONS,
        with_flow(NEAR),
    ),
    *(
        drop(
            f"a first fragment ({name})",
            eth(with_ip(UDP_TO_VIP, frag_off=frag_off)),
            Reason.DROP_FRAGMENT,
        )
        for name, frag_off in (("MF", 0x2000), ("MF and DF", 0x6000))
    ),
    *(
        # no UDP header in them, so they cannot be matched to a VIP port
        passed(
            f"a later fragment ({name}) goes to the kernel",
            eth(with_ip(UDP_TO_VIP, frag_off=frag_off)),
            Reason.PASS_NOT_OURS,
        )
        for name, frag_off in (("offset 8", 0x0001), ("offset 128, MF", 0x2010))
    ),
    *(
        drop(
            f"UDP length {name}",
            eth(_with_field(PACKET, 24, value)),
            Reason.DROP_BAD_UDP_LEN,
            with_flow(NEAR),
        )
        for name, value in (
            ("0", 0),
            ("1", 1),
            ("7", 7),
            ("9", 9),
            ("one more than the IP length says", PACKET_RIGHT_UDP_LEN + 1),
            ("one less than the IP length says", PACKET_RIGHT_UDP_LEN - 1),
        )
    ),
    drop(
        "IPv4 total length shorter than the UDP length",
        eth(with_ip(PACKET, tot_len=len(PACKET) - 4)),
        Reason.DROP_BAD_UDP_LEN,
        with_flow(NEAR),
    ),
    passed("not IPv4: ARP", ARP, Reason.PASS_NOT_IPV4),
    passed("IPv6 to no VIP6 (an extension header to ::) is not ours", IPV6, Reason.PASS_NOT_OURS),
    passed("not IPv4: a VLAN tag", VLAN, Reason.PASS_NOT_IPV4),
    *(
        passed(f"not ours, untouched: {name}", frame, Reason.PASS_NOT_OURS, with_flow(NEAR))
        for name, frame in {
            "another port": eth(ipv4_udp(CLIENT, CLIENT_PORT, VIP, 3479, GOOD)),
            "another address": eth(
                ipv4_udp(CLIENT, CLIENT_PORT, "198.19.128.11", VIP_PORTS[0], GOOD)
            ),
            "TCP": eth(TCP_TO_VIP),
            "IHL 6 without room for it": eth(bytes([0x46]) + UDP_TO_VIP[1:]),
            "IHL 4": eth(bytes([0x44]) + UDP_TO_VIP[1:]),
            "version 5": eth(bytes([0x55]) + UDP_TO_VIP[1:]),
        }.items()
    ),
)
def test_client_input(relay: Relay, case: Case) -> None:
    check(relay, case)


def test_counts_bytes_per_reason(relay: Relay) -> None:
    frames = [client_frame(b"\x80" * n) for n in (10, 100, 1000)]
    for frame in frames:
        check(relay, drop(f"{len(frame)} bytes", frame, Reason.DROP_NO_FLOW))
    assert relay.counters()[Reason.DROP_NO_FLOW] == (3, sum(map(len, frames)))
    assert struct.calcsize("QQ") == 16  # struct counter { u64 packets; u64 bytes; }
