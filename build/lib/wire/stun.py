"""STUN as far as the relay reads it (docs/wire-format.md §2): find the routing ufrag.

`routing_ufrag` applies the spec's checks in the spec's order, so that the Python reason for a
packet and the relay's drop counter agree on every vector.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
ATTR_USERNAME = 0x0006
HEADER_LEN = 20
MAX_ATTRS = 16  # the relay walks at most this many attributes (a BPF loop bound)
UFRAG_LEN = 24
_HEADER = struct.Struct(">HHI12s")
_ATTR = struct.Struct(">HH")

# Reasons, in the order they are checked.
NOT_STUN = "not_stun"
TRUNCATED = "truncated"
BAD_COOKIE = "bad_cookie"
NOT_BINDING = "not_binding"
NO_USERNAME = "no_username"
BAD_UFRAG = "bad_ufrag"
REASONS = (NOT_STUN, TRUNCATED, BAD_COOKIE, NOT_BINDING, NO_USERNAME, BAD_UFRAG)


class StunError(ValueError):
    """A packet the relay cannot route by ufrag; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def encode_attr(attr_type: int, value: bytes) -> bytes:
    """One attribute: type, length, value zero-padded to a multiple of 4."""
    return _ATTR.pack(attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)


def build_message(
    msg_type: int,
    attrs: Sequence[tuple[int, bytes]] = (),
    *,
    transaction_id: bytes | None = None,
    cookie: int = MAGIC_COOKIE,
) -> bytes:
    """A STUN message with the given attributes (no integrity, no fingerprint)."""
    tid = os.urandom(12) if transaction_id is None else transaction_id
    if len(tid) != 12:
        raise ValueError(f"transaction id must be 12 bytes, got {len(tid)}")
    body = b"".join(encode_attr(t, v) for t, v in attrs)
    return _HEADER.pack(msg_type, len(body), cookie, tid) + body


def build_binding_request(
    username: str,
    *,
    transaction_id: bytes | None = None,
    attrs_before: Sequence[tuple[int, bytes]] = (),
    attrs_after: Sequence[tuple[int, bytes]] = (),
    cookie: int = MAGIC_COOKIE,
) -> bytes:
    """A Binding request carrying USERNAME between `attrs_before` and `attrs_after`."""
    attrs = [*attrs_before, (ATTR_USERNAME, username.encode("utf-8")), *attrs_after]
    return build_message(BINDING_REQUEST, attrs, transaction_id=transaction_id, cookie=cookie)


def routing_ufrag(packet: bytes) -> str:
    """The 24-character server ufrag from a Binding request's USERNAME; raises StunError."""
    if not packet or packet[0] > 1:
        raise StunError(NOT_STUN, "not STUN: first byte is not 0 or 1 (RFC 7983)")
    if len(packet) < HEADER_LEN:
        raise StunError(TRUNCATED, f"{len(packet)} bytes is shorter than a STUN header")
    msg_type, msg_len, cookie, _tid = _HEADER.unpack_from(packet)
    if cookie != MAGIC_COOKIE:
        raise StunError(BAD_COOKIE, f"magic cookie {cookie:#010x}, expected {MAGIC_COOKIE:#010x}")
    if msg_len % 4:
        raise StunError(NOT_STUN, f"not STUN: message length {msg_len} is not a multiple of 4")
    end = HEADER_LEN + msg_len
    if end > len(packet):
        raise StunError(
            TRUNCATED, f"message length {msg_len} runs past the {len(packet)}-byte payload"
        )
    if msg_type != BINDING_REQUEST:
        raise StunError(NOT_BINDING, f"message type {msg_type:#06x} is not a Binding request")
    off = HEADER_LEN
    for _ in range(MAX_ATTRS):
        if off + _ATTR.size > end:
            break
        attr_type, attr_len = _ATTR.unpack_from(packet, off)
        value_at = off + _ATTR.size
        if value_at + attr_len > end:
            raise StunError(TRUNCATED, f"attribute {attr_type:#06x} runs past the message")
        if attr_type == ATTR_USERNAME:
            return _ufrag_of(packet[value_at : value_at + attr_len])
        off = value_at + attr_len + (-attr_len % 4)
    raise StunError(NO_USERNAME, f"no USERNAME in the first {MAX_ATTRS} attributes")


def _ufrag_of(username: bytes) -> str:
    if len(username) <= UFRAG_LEN or username[UFRAG_LEN] != ord(":"):
        raise StunError(BAD_UFRAG, "USERNAME is not '<24-char server ufrag>:<client ufrag>'")
    try:
        return username[:UFRAG_LEN].decode("ascii")
    except UnicodeDecodeError:
        raise StunError(BAD_UFRAG, "server ufrag is not ASCII") from None
