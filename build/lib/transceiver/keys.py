"""The routing keys this transceiver mints server ufrags with (docs/wire-format.md §1)."""

from __future__ import annotations

from collections.abc import Mapping

from wire import ufrag


class NoRoutingKey(RuntimeError):
    """No current key: the transceiver cannot mint ufrags, so it cannot take calls."""


class Keyring:
    """Every loaded key plus the current key id; rotation just swaps the mapping.

    Running calls keep the ufrag they were minted with (the relay still holds the old key until
    the operator removes it), so rotating here never disturbs them.
    """

    def __init__(self, keys: Mapping[int, bytes] | None = None, current: int | None = None):
        self.keys: dict[int, bytes] = {}
        self.current: int | None = None
        self.update(keys or {}, current)

    def update(self, keys: Mapping[int, bytes], current: int | None) -> None:
        for kid, key in keys.items():
            if not 0 <= kid <= ufrag.MAX_KEY_ID or len(key) != ufrag.KEY_LEN:
                raise ValueError(f"bad routing key {kid}: id 0..15, 16 bytes")
        if current is not None and current not in keys:
            raise ValueError(f"current key id {current} has no key")
        self.keys = dict(keys)
        self.current = current

    def mint(self, cluster: int, transceiver: int) -> str:
        if self.current is None:
            raise NoRoutingKey("no current routing key (give --key-id/--key or keys in Redis)")
        return ufrag.mint(self.current, self.keys[self.current], cluster, transceiver)


def parse_key(hex_key: str) -> bytes:
    try:
        key = bytes.fromhex(hex_key)
    except ValueError:
        raise ValueError("key must be 32 hex characters") from None
    if len(key) != ufrag.KEY_LEN:
        raise ValueError(f"key must be 32 hex characters ({ufrag.KEY_LEN} bytes)")
    return key
