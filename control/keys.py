"""`relayctl keys`: routing keys in the registry - add, list, promote, retire.

A rotation never drops a call (docs/operations.md, "Rotating routing keys"): relays must hold a
key before transceivers mint with it (promote checks every registered relay reports it), and a
key must outlive every ufrag minted with it (retire warns when it was current recently).
Key bytes are printed only on request (`keys list --show`); otherwise a fingerprint.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from control.errors import RelayctlError
from control.sync import key_fingerprint
from wire import registry
from wire.ufrag import KEY_LEN, MAX_KEY_ID


@dataclass
class KeyRow:
    key_id: int
    current: bool
    fingerprint: str
    hex: str
    added: float | None  # unix time (None: written by hand)
    current_until: float | None  # when it stopped being current (None: never was, or is)
    relays_with: int  # registered relays reporting this key (same fingerprint) loaded
    relays: int  # registered relays

    def as_dict(self, show: bool) -> dict[str, Any]:
        d = {
            "key_id": self.key_id,
            "current": self.current,
            "fingerprint": self.fingerprint,
            "added": self.added,
            "current_until": self.current_until,
            "relays_with": self.relays_with,
            "relays": self.relays,
        }
        if show:
            d["key"] = self.hex
        return d


def _history(r: Any, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in r.hgetall(registry.history_key(prefix)).items():
        try:
            out[registry._s(k)] = float(registry._s(v))
        except ValueError:
            continue
    return out


def list_keys(r: Any, prefix: str) -> tuple[list[KeyRow], list[str]]:
    """Every key with where it stands; problems (malformed entries, relays lacking the current)."""
    reg = registry.read_registry(r, prefix=prefix)
    problems = [p for p in reg.problems if "keys" in p]
    relays, relay_problems = registry.read_relays(r, prefix=prefix)
    history = _history(r, prefix)
    rows = []
    for kid in sorted(reg.keys):
        fp = key_fingerprint(reg.keys[kid])
        have = sum(1 for rel in relays.values() if (kid, fp) in rel.keys)
        rows.append(
            KeyRow(
                kid,
                kid == reg.current_key,
                fp,
                reg.keys[kid].hex(),
                history.get(f"added:{kid}"),
                None if kid == reg.current_key else history.get(str(kid)),
                have,
                len(relays),
            )
        )
    return rows, problems + relay_problems


def add(r: Any, prefix: str, key_id: int | None, key: bytes | None) -> tuple[int, bytes]:
    """Put a key (random unless given) into slot `key_id` (default: the lowest free one)."""
    taken = set(registry.read_registry(r, prefix=prefix).keys)
    if key_id is None:
        free = [k for k in range(MAX_KEY_ID + 1) if k not in taken]
        if not free:
            raise RelayctlError(f"all {MAX_KEY_ID + 1} key slots are taken: retire one first")
        key_id = free[0]
    key = key if key is not None else secrets.token_bytes(KEY_LEN)
    if key_id in taken or not registry.add_key(r, key_id, key, prefix=prefix):
        raise RelayctlError(
            f"key slot {key_id} is taken (ufrags minted with it may be in use): retire it first"
        )
    return key_id, key


def promote(r: Any, prefix: str, key_id: int, force: bool = False) -> list[str]:
    """Make `key_id` current. Refused while a registered relay lacks it (its new calls would be
    dropped), unless `force`. Returns warnings."""
    rows, _ = list_keys(r, prefix)
    row = next((x for x in rows if x.key_id == key_id), None)
    if row is None:
        raise RelayctlError(f"no key {key_id} in the registry: `relayctl keys add` it first")
    warnings = []
    if row.relays == 0:
        warnings.append("no relay is registered: cannot check that relays hold the key")
    elif row.relays_with < row.relays:
        missing = f"{row.relays - row.relays_with} of {row.relays} registered relays"
        if not force:
            raise RelayctlError(
                f"{missing} do not hold key {key_id} yet (wait for their next pass, or --force)"
            )
        warnings.append(f"{missing} do not hold key {key_id}: their new calls will be dropped")
    registry.set_current_key(r, key_id, prefix=prefix)
    return warnings


def retire(r: Any, prefix: str, key_id: int, min_age: float, force: bool = False) -> list[str]:
    """Remove `key_id` (relays drop it on their next pass; its ufrags stop routing new flows).

    The current key is never retired. A key current less than `min_age` s ago may still be in
    running calls' ufrags (ICE restarts and new flows after a failover need it): refused unless
    `force`, which turns the refusal into a warning.
    """
    rows, _ = list_keys(r, prefix)
    row = next((x for x in rows if x.key_id == key_id), None)
    if row is None:
        raise RelayctlError(f"no key {key_id} in the registry")
    if row.current:
        raise RelayctlError(f"key {key_id} is current: promote another key first")
    warnings = []
    if row.current_until is not None and (age := time.time() - row.current_until) < min_age:
        msg = (
            f"key {key_id} was current {age:.0f} s ago (< --min-age {min_age:.0f} s): calls "
            "placed then may still need it"
        )
        if not force:
            raise RelayctlError(msg + " (--force to retire it anyway)")
        warnings.append(msg)
    registry.remove_key(r, key_id, prefix=prefix)
    return warnings
