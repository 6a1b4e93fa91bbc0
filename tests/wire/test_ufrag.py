"""The routing ufrag: mint/decode/verify, error reasons, ICE character rules."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import ufrag
from wire.ufrag import UFRAG_LEN, UfragError

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")


@settings(deadline=None)  # shared CI cores: no per-example time limit
@given(
    key_id=st.integers(0, 15),
    key=st.binary(min_size=16, max_size=16),
    cluster=st.integers(0, 0xFFFF),
    txr=st.integers(0, 0xFFFFFFFF),
    nonce=st.binary(min_size=5, max_size=5),
)
def test_mint_decode_verify_round_trip(
    key_id: int, key: bytes, cluster: int, txr: int, nonce: bytes
) -> None:
    u = ufrag.mint(key_id, key, cluster, txr, nonce)
    # RFC 8445 ice-char only, and short enough for every ICE stack (<= 32).
    assert len(u) == UFRAG_LEN <= 32
    assert ICE_CHARS.fullmatch(u)
    hint = ufrag.verify(u, {key_id: key})
    assert (hint.version, hint.key_id, hint.cluster, hint.transceiver) == (1, key_id, cluster, txr)
    assert hint.nonce == nonce
    assert ufrag.decode(u) == hint


def test_layout_is_the_spec_table() -> None:
    u = ufrag.mint(3, KEY, 0x0102, 0x03040506, bytes.fromhex("0708090a0b"))
    raw = base64.b64decode(u)
    assert raw[:12].hex() == "13" + "0102" + "03040506" + "0708090a0b"
    assert raw[12:] == ufrag.compute_tag(KEY, raw[:12])


def test_fresh_nonce_has_40_random_bits() -> None:
    mints = {ufrag.mint(1, KEY, 1, 7) for _ in range(64)}
    assert len(mints) == 64
    nonces = {ufrag.decode(u).nonce for u in mints}
    assert len(nonces) == 64 and all(len(n) == 5 for n in nonces)


@pytest.mark.parametrize(
    ("text", "keys", "reason"),
    [
        ("A" * 23, {1: KEY}, "bad_ufrag"),
        ("A" * 25, {1: KEY}, "bad_ufrag"),
        ("EQABAAAABwECAwQFZwvGEk-c", {1: KEY}, "bad_ufrag"),
        ("AAAAAAAAAAAAAAAAAAAAAAAA", {0: KEY}, "bad_ufrag"),  # version 0
    ],
)
def test_decode_errors(text: str, keys: dict[int, bytes], reason: str) -> None:
    with pytest.raises(UfragError) as err:
        ufrag.verify(text, keys)
    assert err.value.reason == reason
    assert err.value.message


def test_unknown_key_and_bad_tag() -> None:
    u = ufrag.mint(4, KEY, 9, 10)
    with pytest.raises(UfragError) as err:
        ufrag.verify(u, {5: KEY})
    assert err.value.reason == "unknown_key"
    with pytest.raises(UfragError) as err:
        ufrag.verify(u, {4: bytes(16)})
    assert err.value.reason == "bad_tag"


@settings(deadline=None)  # shared CI cores: no per-example time limit
@given(index=st.integers(0, UFRAG_LEN - 1), data=st.data())
def test_any_changed_character_fails(index: int, data: st.DataObject) -> None:
    u = ufrag.mint(1, KEY, 1, 7, bytes(5))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    c = data.draw(st.sampled_from([ch for ch in alphabet if ch != u[index]]))
    forged = u[:index] + c + u[index + 1 :]
    with pytest.raises(UfragError) as err:
        ufrag.verify(forged, {k: KEY for k in range(16)})
    # Changing character 0 can change the version (bad_ufrag); anything else must fail the tag.
    assert err.value.reason in (("bad_ufrag", "bad_tag") if index == 0 else ("bad_tag",))


@pytest.mark.parametrize(
    "args",
    [
        (16, KEY, 1, 1),
        (-1, KEY, 1, 1),
        (1, KEY[:15], 1, 1),
        (1, KEY, 0x10000, 1),
        (1, KEY, 1, 1 << 32),
    ],
)
def test_mint_rejects_out_of_range(args: tuple) -> None:
    with pytest.raises(ValueError):
        ufrag.mint(*args)
