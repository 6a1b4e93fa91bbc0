"""`relayctl map sync`: make the keys, transceivers and txr_addrs maps equal to a registry.

The diff is applied in an order that never leaves the relay worse than before or after:
new keys and new/increased tunnel addresses first, then transceivers, then decreases and key
removals, so at no point is a transceiver in the map whose address or key is missing.
"""

from __future__ import annotations

import ctypes as ct
import hashlib
from collections import Counter
from dataclasses import dataclass

from control.maps import RelayMaps, RoutingKey, TxrKey, TxrVal, be16, be32, from_be16, from_be32
from control.maps import vip_key as addr_key
from wire.registry import Registry
from wire.ufrag import MAX_KEY_ID

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Change:
    table: str  # keys | transceivers | txr_addrs
    action: str  # add | change | remove
    key: str
    old: str | None = None
    new: str | None = None

    def __str__(self) -> str:
        sign = {"add": "+", "change": "~", "remove": "-"}[self.action]
        detail = (
            self.new
            if self.action == "add"
            else self.old
            if self.action == "remove"
            else f"{self.old} -> {self.new}"
        )
        return f"{sign} {self.table} {self.key}: {detail}"


@dataclass
class MapState:
    keys: dict[int, bytes]
    transceivers: dict[tuple[int, int], Endpoint]
    txr_addrs: dict[Endpoint, int]


def _key_bytes(k: RoutingKey) -> bytes:
    return k.k0.to_bytes(8, "little") + k.k1.to_bytes(8, "little")


def read_state(maps: RelayMaps) -> MapState:
    keys = {}
    for kid in range(MAX_KEY_ID + 1):
        k = maps["keys"].lookup(ct.c_uint32(kid))
        if k is not None and k.live:
            keys[kid] = _key_bytes(k)
    txrs = {
        (k.cluster, k.id): (from_be32(v.addr), from_be16(v.port))
        for k, v in maps["transceivers"].items()
    }
    addrs = {(from_be32(k.addr), from_be16(k.port)): v.value for k, v in maps["txr_addrs"].items()}
    return MapState(keys, txrs, addrs)


def desired_state(reg: Registry) -> MapState:
    txrs = {key: rec.tunnel_endpoint for key, rec in reg.transceivers.items()}
    return MapState(dict(reg.keys), txrs, dict(Counter(txrs.values())))


def key_fingerprint(key: bytes) -> str:
    # Never print key material: a short hash tells keys apart.
    return "sha256:" + hashlib.sha256(key).hexdigest()[:12]


def _fmt(ep: Endpoint) -> str:
    return f"{ep[0]}:{ep[1]}"


def _diff(table: str, old: dict, new: dict, show_key, show_val) -> list[Change]:
    out = []
    for k in sorted(new.keys() - old.keys()):
        out.append(Change(table, "add", show_key(k), None, show_val(new[k])))
    for k in sorted(old.keys() & new.keys()):
        if old[k] != new[k]:
            out.append(Change(table, "change", show_key(k), show_val(old[k]), show_val(new[k])))
    for k in sorted(old.keys() - new.keys()):
        out.append(Change(table, "remove", show_key(k), show_val(old[k]), None))
    return out


def plan(current: MapState, wanted: MapState) -> list[Change]:
    """Every change, in the order `apply` performs them."""
    keys = _diff("keys", current.keys, wanted.keys, str, key_fingerprint)
    txrs = _diff(
        "transceivers", current.transceivers, wanted.transceivers, lambda k: f"{k[0]}/{k[1]}", _fmt
    )
    addrs = _diff("txr_addrs", current.txr_addrs, wanted.txr_addrs, _fmt, str)

    def grows(c: Change) -> bool:
        return c.action == "add" or (c.action == "change" and int(c.new or 0) > int(c.old or 0))

    return [
        *(c for c in keys if c.action != "remove"),
        *(c for c in addrs if grows(c)),
        *txrs,
        *(c for c in addrs if not grows(c)),
        *(c for c in keys if c.action == "remove"),
    ]


def _key_struct(key: bytes) -> RoutingKey:
    return RoutingKey(int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"), 1, 0)


def guard_empty(current: MapState, wanted: MapState) -> tuple[MapState, list[str]]:
    """Keep loaded keys / transceivers when the registry has none at all.

    An empty table in the registry is far more often a Redis that just restarted (no
    persistence, transceivers not yet re-registered) than an intent to stop all calls, and
    clearing the relay's maps would drop every call at once. `--allow-empty` overrides.
    """
    warnings = []
    keys, txrs, addrs = wanted.keys, wanted.transceivers, wanted.txr_addrs
    if not keys and current.keys:
        keys = current.keys
        warnings.append(f"registry has no keys: kept the {len(keys)} loaded (--allow-empty)")
    if not txrs and current.transceivers:
        txrs, addrs = current.transceivers, current.txr_addrs
        warnings.append(
            f"registry has no transceivers: kept the {len(txrs)} loaded (--allow-empty)"
        )
    return MapState(keys, txrs, addrs), warnings


def apply(
    maps: RelayMaps, reg: Registry, *, dry_run: bool = False, allow_empty: bool = False
) -> tuple[list[Change], list[str]]:
    """Diff the registry against the pinned maps and write the difference (unless dry_run).

    Returns the changes and warnings (see guard_empty)."""
    current = read_state(maps)
    wanted = desired_state(reg)
    warnings: list[str] = []
    if not allow_empty:
        wanted, warnings = guard_empty(current, wanted)
    changes = plan(current, wanted)
    if dry_run:
        return changes, warnings
    for c in changes:
        if c.table == "keys":
            kid = int(c.key)
            value = RoutingKey() if c.action == "remove" else _key_struct(wanted.keys[kid])
            maps["keys"].update(ct.c_uint32(kid), value)
        elif c.table == "transceivers":
            cluster, tid = (int(x) for x in c.key.split("/"))
            key = TxrKey(cluster, 0, tid)
            if c.action == "remove":
                maps["transceivers"].delete(key)
            else:
                addr, port = wanted.transceivers[(cluster, tid)]
                maps["transceivers"].update(key, TxrVal(be32(addr), be16(port), 0))
        else:
            addr, _, port = c.key.rpartition(":")
            key = addr_key(addr, int(port))
            if c.action == "remove":
                maps["txr_addrs"].delete(key)
            else:
                maps["txr_addrs"].update(key, ct.c_uint32(wanted.txr_addrs[(addr, int(port))]))
    return changes, warnings
