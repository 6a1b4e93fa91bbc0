"""The routing ufrag (docs/wire-format.md §1): 18 bytes, base64, 24 ICE characters.

bytes 0      ver_kid      version (high nibble, 2) | key id (low nibble)
      1-2    cluster      u16 BE
      3-6    transceiver  u32 BE
      7-8.5  epoch        12 bits: unix seconds // 300, mod 4096 (when it was minted)
      8.5-11 nonce        28 random bits (the low nibble of byte 8, bytes 9-11)
      12-17  tag          first 6 bytes of SipHash-2-4(key, bytes 0..11) serialised little-endian
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

from wire.siphash import siphash24

UFRAG_LEN = 24
VERSION = 2
NONCE_LEN = 4  # bytes holding the 28-bit nonce (its high nibble 0)
NONCE_BITS = 28
EPOCH_SECONDS = 300
EPOCH_MOD = 1 << 12
TAG_LEN = 6
KEY_LEN = 16
MAX_KEY_ID = 15
_BODY = struct.Struct(">BHI")  # ver_kid, cluster, transceiver: the 7 bytes before the nonce
_ALPHABET = re.compile(r"[A-Za-z0-9+/]*")


class UfragError(ValueError):
    """A ufrag that routes nowhere; `reason` is bad_ufrag, unknown_key or bad_tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RoutingHint:
    version: int
    key_id: int
    cluster: int
    transceiver: int
    epoch: int
    nonce: bytes
    tag: bytes


def epoch_at(unix_time: float) -> int:
    """The 12-bit epoch a ufrag minted at unix_time carries."""
    return int(unix_time // EPOCH_SECONDS) % EPOCH_MOD


def epoch_fresh(epoch: int, now_epoch: int, max_age: int) -> bool:
    """May a ufrag of `epoch` still create flows when it is `now_epoch`? Its age mod 4096 at most
    max_age + 1 (the minter's clock one epoch behind), or -1 (one ahead). bpf/ufrag.h's
    ufrag_epoch_fresh is the same rule."""
    age = (now_epoch - epoch) % EPOCH_MOD
    return age <= max_age + 1 or age == EPOCH_MOD - 1


def compute_tag(key: bytes, signed: bytes) -> bytes:
    """The 6-byte tag over the 12 signed bytes (LE serialisation of the 64-bit SipHash)."""
    return siphash24(key, signed).to_bytes(8, "little")[:TAG_LEN]


def mint(
    key_id: int,
    key: bytes,
    cluster: int,
    transceiver: int,
    nonce: bytes | None = None,
    epoch: int | None = None,
) -> str:
    """A fresh routing ufrag of the current epoch; `nonce` and `epoch` are fixed only for test
    vectors and tests."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id must be 0..{MAX_KEY_ID}, got {key_id}")
    if len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes, got {len(key)}")
    if not 0 <= cluster <= 0xFFFF:
        raise ValueError(f"cluster must be 0..65535, got {cluster}")
    if not 0 <= transceiver <= 0xFFFFFFFF:
        raise ValueError(f"transceiver must be 0..4294967295, got {transceiver}")
    if nonce is None:
        nonce = (int.from_bytes(os.urandom(NONCE_LEN), "big") >> 4).to_bytes(NONCE_LEN, "big")
    if len(nonce) != NONCE_LEN or nonce[0] >> 4:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes below 2**{NONCE_BITS}")
    if epoch is None:
        epoch = epoch_at(time.time())
    if not 0 <= epoch < EPOCH_MOD:
        raise ValueError(f"epoch must be 0..{EPOCH_MOD - 1}, got {epoch}")
    tail = (epoch << NONCE_BITS) | int.from_bytes(nonce, "big")  # bytes 7..11, 40 bits
    signed = _BODY.pack((VERSION << 4) | key_id, cluster, transceiver) + tail.to_bytes(5, "big")
    return base64.b64encode(signed + compute_tag(key, signed)).decode("ascii")


def decode(ufrag: str) -> RoutingHint:
    """Parse without checking the tag; raises UfragError("bad_ufrag") on length/char/version."""
    if len(ufrag) != UFRAG_LEN:
        raise UfragError("bad_ufrag", f"ufrag must be {UFRAG_LEN} characters, got {len(ufrag)}")
    if not _ALPHABET.fullmatch(ufrag):
        raise UfragError("bad_ufrag", "ufrag has a character outside A-Z a-z 0-9 + /")
    try:
        raw = base64.b64decode(ufrag, validate=True)
    except binascii.Error as exc:  # unreachable for 24 alphabet chars; kept as a guard
        raise UfragError("bad_ufrag", f"ufrag is not base64: {exc}") from None
    ver_kid, cluster, transceiver = _BODY.unpack_from(raw)
    version = ver_kid >> 4
    if version != VERSION:
        raise UfragError("bad_ufrag", f"ufrag version {version}, only {VERSION} is known")
    tail = int.from_bytes(raw[7:12], "big")
    return RoutingHint(
        version=version,
        key_id=ver_kid & 0x0F,
        cluster=cluster,
        transceiver=transceiver,
        epoch=tail >> NONCE_BITS,
        nonce=(tail & ((1 << NONCE_BITS) - 1)).to_bytes(NONCE_LEN, "big"),
        tag=raw[12:18],
    )


def verify(ufrag: str, keys: Mapping[int, bytes]) -> RoutingHint:
    """Decode and check the tag under keys[key_id]; raises UfragError on any failure."""
    hint = decode(ufrag)
    key = keys.get(hint.key_id)
    if key is None:
        raise UfragError("unknown_key", f"no key loaded under key id {hint.key_id}")
    signed = base64.b64decode(ufrag)[:12]
    if not hmac.compare_digest(compute_tag(key, signed), hint.tag):
        raise UfragError("bad_tag", "ufrag tag does not verify under its key")
    return hint
