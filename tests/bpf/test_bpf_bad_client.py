"""Bad input from the client side: every malformed packet is a counted drop or a counted pass,
and a drop never touches the flow map."""

from __future__ import annotations

import base64
import struct

import pytest
from bpfharness import (
    CLIENT,
    CLIENT_PORT,
    KEY,
    KEY_ID,
    NEAR,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    Relay,
    client_frame,
    eth,
)

from control.reasons import Reason
from wire.encap import checksum, ipv4_udp
from wire.stun import ATTR_USERNAME, build_binding_request, build_message
from wire.ufrag import mint

UFRAG = mint(KEY_ID, KEY, NEAR.cluster, NEAR.id, b"\x01\x02\x03\x04\x05")
GOOD = build_binding_request(UFRAG + ":cl1E", attrs_before=[(0x0024, b"\x6e\x7f\x1e\xff")])


def _flow_bytes(relay: Relay) -> list[tuple[bytes, bytes]]:
    return sorted((bytes(k), bytes(v)) for k, v in relay.flows())


def drop(relay: Relay, frame: bytes, reason: Reason) -> None:
    """frame is dropped, counted once under reason, and the flow map is left as it was."""
    flows = _flow_bytes(relay)
    out = relay.run(frame)
    assert (out.action, out.counts) == (XDP_DROP, {reason: (1, len(frame))})
    assert _flow_bytes(relay) == flows


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


def test_good_packet_is_routed(relay: Relay) -> None:
    # the baseline every mutation below starts from
    assert relay.run(client_frame(GOOD)).reason == Reason.FWD_STUN_NEW


@pytest.mark.parametrize("cut", range(1, len(GOOD)))
def test_stun_truncated_at_every_length(relay: Relay, cut: int) -> None:
    # the STUN message cut short inside a well-formed UDP datagram
    drop(relay, client_frame(GOOD[:cut]), Reason.DROP_TRUNCATED)


def test_frame_truncated_at_every_length(relay: Relay) -> None:
    # the frame cut short: IPv4 and UDP lengths now claim more than arrived
    frame = client_frame(GOOD)
    for cut in range(14, len(frame)):
        out = relay.run(frame[:cut])
        if cut < 14 + 20 + 8:  # ports not readable: cannot be ours
            assert (out.action, out.reason) == (XDP_PASS, Reason.PASS_NOT_OURS), cut
            assert out.data == frame[:cut]
        else:
            assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_TRUNCATED), cut
    assert relay.flows() == []


def test_attribute_running_past_the_message(relay: Relay) -> None:
    username = (UFRAG + ":cl1E").encode()
    for before in ([], [(0x0024, b"\x00\x00\x00\x01")]):
        msg = bytearray(build_message(0x0001, [*before, (ATTR_USERNAME, username)]))
        at = 20 + sum(4 + len(v) for _, v in before)
        for bogus in (len(username) + 4, 0x0FFF, 0xFFFF):  # value longer than what is left
            msg[at + 2 : at + 4] = bogus.to_bytes(2, "big")
            drop(relay, client_frame(bytes(msg)), Reason.DROP_TRUNCATED)
    # an earlier attribute that overruns hides everything after it
    msg = bytearray(GOOD)
    msg[22:24] = (len(GOOD) - 20 - 4 + 1).to_bytes(2, "big")
    drop(relay, client_frame(bytes(msg)), Reason.DROP_TRUNCATED)


def test_header_length_past_the_payload(relay: Relay) -> None:
    msg = bytearray(GOOD)
    msg[2:4] = (len(GOOD) - 20 + 4).to_bytes(2, "big")
    drop(relay, client_frame(bytes(msg)), Reason.DROP_TRUNCATED)


def test_message_length_shorter_than_payload_hides_username(relay: Relay) -> None:
    msg = bytearray(GOOD)
    msg[2:4] = (8).to_bytes(2, "big")  # only the first attribute is inside the message
    drop(relay, client_frame(bytes(msg)), Reason.DROP_NO_USERNAME)


def test_attribute_walk_is_bounded_at_16(relay: Relay) -> None:
    filler = [(0x8022, b"x")] * 15
    user = (ATTR_USERNAME, (UFRAG + ":cl1E").encode())
    assert relay.run(client_frame(build_message(0x0001, [*filler, user]))).reason == (
        Reason.FWD_STUN_NEW
    )
    relay.maps["flows"].clear()
    drop(
        relay,
        client_frame(build_message(0x0001, [*filler, filler[0], user])),
        Reason.DROP_NO_USERNAME,
    )


def test_no_username(relay: Relay) -> None:
    drop(relay, client_frame(build_message(0x0001, [])), Reason.DROP_NO_USERNAME)
    drop(relay, client_frame(build_message(0x0001, [(0x0024, b"abcd")])), Reason.DROP_NO_USERNAME)


def test_wrong_cookie(relay: Relay) -> None:
    msg = bytearray(GOOD)
    msg[7] ^= 1
    drop(relay, client_frame(bytes(msg)), Reason.DROP_BAD_COOKIE)
    drop(relay, client_frame(b"\x01" + bytes(19)), Reason.DROP_BAD_COOKIE)


@pytest.mark.parametrize(
    "username",
    [
        UFRAG,  # no ':'
        UFRAG + "x:cl1E",  # ':' at 25
        UFRAG[:23] + ":cl1E",  # ':' at 23
        UFRAG[:10] + "-" + UFRAG[11:] + ":cl1E",  # '-' is not in the alphabet
        UFRAG[:22] + "==" + ":cl1E",  # padding
        UFRAG[:5] + "\u00e9" + UFRAG[7:] + ":cl1E",  # two UTF-8 bytes in place of one char
        "A" + UFRAG[1:] + ":cl1E",  # version 0
        "I" + UFRAG[1:] + ":cl1E",  # version 2
        ":cl1E",
    ],
)
def test_bad_ufrag(relay: Relay, username: str) -> None:
    drop(relay, client_frame(build_binding_request(username)), Reason.DROP_BAD_UFRAG)


def test_forged_tag(relay: Relay) -> None:
    forged = mint(KEY_ID, bytes(16), NEAR.cluster, NEAR.id)  # right layout, wrong key
    drop(relay, client_frame(build_binding_request(forged + ":cl1E")), Reason.DROP_BAD_TAG)
    raw = bytearray(base64.b64decode(UFRAG))
    raw[4] ^= 0x01  # a different transceiver under the original tag
    moved = base64.b64encode(bytes(raw)).decode()
    drop(relay, client_frame(build_binding_request(moved + ":cl1E")), Reason.DROP_BAD_TAG)


def test_unknown_key_id(relay: Relay) -> None:
    other = mint(KEY_ID + 1, KEY, NEAR.cluster, NEAR.id)
    drop(relay, client_frame(build_binding_request(other + ":cl1E")), Reason.DROP_UNKNOWN_KEY)
    relay.keys({})  # key 1 unloaded (live = 0)
    drop(relay, client_frame(build_binding_request(UFRAG + ":cl1E")), Reason.DROP_UNKNOWN_KEY)


def test_two_live_keys(relay: Relay) -> None:
    new_key = bytes(range(16))
    relay.keys({KEY_ID: KEY, 9: new_key})
    assert (
        relay.run(client_frame(build_binding_request(UFRAG + ":a"))).reason == Reason.FWD_STUN_NEW
    )
    minted = mint(9, new_key, NEAR.cluster, NEAR.id)
    assert relay.run(client_frame(build_binding_request(minted + ":a"))).reason == (
        Reason.FWD_STUN_KNOWN
    )


def test_ip_options(relay: Relay) -> None:
    relay.set_flow(NEAR)
    packet = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], b"\x80rtp")
    drop_frame = eth(with_ip(packet, options=1))
    out = relay.run(drop_frame)
    assert (out.action, out.counts) == (XDP_DROP, {Reason.DROP_IP_OPTIONS: (1, len(drop_frame))})


@pytest.mark.parametrize("frag_off", [0x2000, 0x6000])  # MF, MF+DF: the first fragment
def test_first_fragment(relay: Relay, frag_off: int) -> None:
    packet = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], GOOD)
    drop(relay, eth(with_ip(packet, frag_off=frag_off)), Reason.DROP_FRAGMENT)


@pytest.mark.parametrize("frag_off", [0x0001, 0x2010])
def test_later_fragments_go_to_the_kernel(relay: Relay, frag_off: int) -> None:
    # no UDP header in them, so they cannot be matched to a VIP port
    frame = eth(with_ip(ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], GOOD), frag_off=frag_off))
    out = relay.run(frame)
    assert (out.action, out.reason, out.data) == (XDP_PASS, Reason.PASS_NOT_OURS, frame)


@pytest.mark.parametrize("udp_len", [0, 1, 7, 9, "ip+1", "ip-1"])
def test_bad_udp_length(relay: Relay, udp_len: int | str) -> None:
    relay.set_flow(NEAR)
    packet = bytearray(ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], b"\x80" * 12))
    right = len(packet) - 20
    value = {"ip+1": right + 1, "ip-1": right - 1}.get(udp_len, udp_len)
    packet[24:26] = int(value).to_bytes(2, "big")
    drop(relay, eth(bytes(packet)), Reason.DROP_BAD_UDP_LEN)


def test_ip_total_length_shorter_than_udp(relay: Relay) -> None:
    relay.set_flow(NEAR)
    packet = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], b"\x80" * 12)
    drop(relay, eth(with_ip(packet, tot_len=len(packet) - 4)), Reason.DROP_BAD_UDP_LEN)


def test_not_ipv4_passes(relay: Relay) -> None:
    arp = eth(bytes.fromhex("0001080006040001") + bytes(20), ethertype=0x0806)
    ipv6 = eth(bytes([0x60]) + bytes(47), ethertype=0x86DD)
    vlan = eth(bytes(4) + client_frame(GOOD)[12:], ethertype=0x8100)
    for frame in (arp, ipv6, vlan):
        out = relay.run(frame)
        assert (out.action, out.counts, out.data) == (
            XDP_PASS,
            {Reason.PASS_NOT_IPV4: (1, len(frame))},
            frame,
        )


def test_not_ours_passes_untouched(relay: Relay) -> None:
    relay.set_flow(NEAR)
    udp = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], GOOD)
    tcp = bytearray(udp)
    tcp[9] = 6
    frames = [
        eth(ipv4_udp(CLIENT, CLIENT_PORT, VIP, 3479, GOOD)),  # another port
        eth(ipv4_udp(CLIENT, CLIENT_PORT, "198.19.128.11", VIP_PORTS[0], GOOD)),  # another addr
        eth(bytes(tcp)),
        eth(bytes([0x46]) + udp[1:]),  # IHL 6 but no room: malformed, the kernel's problem
        eth(bytes([0x44]) + udp[1:]),  # IHL 4
        eth(bytes([0x55]) + udp[1:]),  # version 5
    ]
    for frame in frames:
        out = relay.run(frame)
        assert (out.action, out.counts, out.data) == (
            XDP_PASS,
            {Reason.PASS_NOT_OURS: (1, len(frame))},
            frame,
        )
    assert len(relay.flows()) == 1


def test_counts_bytes_per_reason(relay: Relay) -> None:
    frames = [client_frame(b"\x80" * n) for n in (10, 100, 1000)]
    outs = relay.run_many(frames)
    assert [o.counts for o in outs] == [{Reason.DROP_NO_FLOW: (1, len(f))} for f in frames]
    assert relay.counters()[Reason.DROP_NO_FLOW] == (3, sum(map(len, frames)))
    assert struct.calcsize("QQ") == 16  # struct counter { u64 packets; u64 bytes; }
