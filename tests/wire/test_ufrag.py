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
    nonce=st.integers(0, (1 << 28) - 1).map(lambda n: n.to_bytes(4, "big")),
    epoch=st.integers(0, 4095),
)
def test_mint_decode_verify_round_trip(
    key_id: int, key: bytes, cluster: int, txr: int, nonce: bytes, epoch: int
) -> None:
    u = ufrag.mint(key_id, key, cluster, txr, nonce, epoch)
    # RFC 8445 ice-char only, and short enough for every ICE stack (<= 32).
    assert len(u) == UFRAG_LEN <= 32
    assert ICE_CHARS.fullmatch(u)
    hint = ufrag.verify(u, {key_id: key})
    assert (hint.version, hint.key_id, hint.cluster, hint.transceiver) == (2, key_id, cluster, txr)
    assert (hint.nonce, hint.epoch) == (nonce, epoch)
    assert ufrag.decode(u) == hint


def test_layout_is_the_spec_table() -> None:
    u = ufrag.mint(3, KEY, 0x0102, 0x03040506, bytes.fromhex("0708090a"), epoch=0xABC)
    raw = base64.b64decode(u)
    # version 2 | key 3, cluster, transceiver, then epoch 0xabc and nonce 0x708090a
    assert raw[:12].hex() == "23" + "0102" + "03040506" + "abc" + "708090a"
    assert raw[12:] == ufrag.compute_tag(KEY, raw[:12])


def test_fresh_mint_has_28_random_bits_and_the_current_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ufrag.time, "time", lambda: 1_800_000_123.0)
    mints = {ufrag.mint(1, KEY, 1, 7) for _ in range(64)}
    assert len(mints) == 64
    hints = [ufrag.decode(u) for u in mints]
    assert len({h.nonce for h in hints}) == 64 and all(h.nonce[0] < 16 for h in hints)
    assert {h.epoch for h in hints} == {(1_800_000_123 // 300) % 4096}


def test_epoch_at_and_mint_bounds() -> None:
    assert ufrag.epoch_at(0) == 0 and ufrag.epoch_at(299.9) == 0 and ufrag.epoch_at(300) == 1
    assert ufrag.epoch_at(300 * 4096) == 0  # a 14.2-day cycle
    with pytest.raises(ValueError):
        ufrag.mint(1, KEY, 1, 7, bytes.fromhex("10000000"))  # 29 bits
    with pytest.raises(ValueError):
        ufrag.mint(1, KEY, 1, 7, epoch=4096)


def test_version_1_is_refused() -> None:
    signed = bytes([0x11]) + base64.b64decode(ufrag.mint(1, KEY, 1, 7))[1:12]
    v1 = base64.b64encode(signed + ufrag.compute_tag(KEY, signed)).decode()
    with pytest.raises(UfragError) as err:
        ufrag.verify(v1, {1: KEY})
    assert err.value.reason == "bad_ufrag"


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
    u = ufrag.mint(1, KEY, 1, 7, bytes(4))
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
