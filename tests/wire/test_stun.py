"""STUN parsing: where the routing ufrag is found, and why a packet is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import stun
from wire.stun import StunError

U = "EQABAAAABwECAwQFZwvGEkdc"


def test_username_found_among_attributes() -> None:
    pkt = stun.build_binding_request(
        f"{U}:abcd",
        attrs_before=[(0x8022, b"abc"), (0x0024, b"\x00\x00\x00\x01")],
        attrs_after=[(0x0008, bytes(20)), (0x8028, bytes(4))],
    )
    assert stun.routing_ufrag(pkt) == U
    assert pkt[:2] == b"\x00\x01" and pkt[4:8] == b"\x21\x12\xa4\x42"
    assert int.from_bytes(pkt[2:4], "big") == len(pkt) - 20


@settings(deadline=None)  # shared CI cores: no per-example time limit
@given(st.binary(max_size=200))
def test_any_bytes_give_a_ufrag_or_a_reason(data: bytes) -> None:
    try:
        assert len(stun.routing_ufrag(data)) == 24
    except StunError as exc:
        assert exc.reason in stun.REASONS


@settings(deadline=None)  # shared CI cores: no per-example time limit
@given(
    client=st.text(alphabet="abcdefXYZ0123+/", min_size=0, max_size=40),
    before=st.lists(
        st.tuples(st.sampled_from([0x24, 0x25, 0x802A, 0x8022]), st.binary(max_size=9)), max_size=15
    ),
)
def test_username_anywhere_in_the_first_16(client: str, before: list[tuple[int, bytes]]) -> None:
    pkt = stun.build_binding_request(f"{U}:{client}", attrs_before=before)
    assert stun.routing_ufrag(pkt) == U


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (b"\x80" + bytes(40), "not_stun"),
        (bytes(19), "truncated"),
        (b"", "not_stun"),
        (stun.build_binding_request(f"{U}:x", cookie=1), "bad_cookie"),
        (stun.build_binding_request(f"{U}:x")[:-4], "truncated"),
        (stun.build_message(0x0101, [(6, f"{U}:x".encode())]), "not_binding"),
        (stun.build_message(0x0001, []), "no_username"),
        (stun.build_binding_request(U), "bad_ufrag"),
        (stun.build_binding_request("é" * 13 + ":x"), "bad_ufrag"),
    ],
)
def test_reasons(pkt: bytes, reason: str) -> None:
    with pytest.raises(StunError) as err:
        stun.routing_ufrag(pkt)
    assert err.value.reason == reason
