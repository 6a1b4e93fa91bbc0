"""registry -> maps: make the keys, transceivers and txr_addrs maps equal to a registry.

`apply` (used by `relayctl map sync` once, and by `RegistrySync`, the job `relayctl run` runs on
every pass) diffs and writes in an order that never leaves the relay worse than before or after:
new keys and new/increased tunnel addresses first, then transceivers, then decreases and key
removals, so at no point is a transceiver in the map whose address or key is missing.

An empty registry table is usually a Redis that restarted without persistence (transceivers
re-register within seconds), so `EmptyGuard` keeps the loaded entries until the table has stayed
empty for a grace period (forever for a one-shot `map sync` without --allow-empty).
"""

from __future__ import annotations

import ctypes as ct
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control.fleet import RemoteClusters
from datapath.maps import (
    CLUSTER_LOCAL,
    CLUSTER_REMOTE,
    RelayMaps,
    RoutingKey,
    TxrKey,
    TxrVal,
    be16,
    be32,
    bump_txr_gen,
    from_be16,
    from_be32,
)
from datapath.maps import vip_key as addr_key
from wire.registry import Registry, TransceiverRecord, read_registry
from wire.ufrag import MAX_KEY_ID

log = logging.getLogger("relayctl.sync")
CLUSTER_KINDS = {CLUSTER_LOCAL: "local", CLUSTER_REMOTE: "remote"}

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Change:
    table: str  # keys | clusters | transceivers | txr_addrs
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
    clusters: dict[int, int] = field(default_factory=dict)  # id -> CLUSTER_LOCAL | _REMOTE


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
    clusters = {k.value: v.value for k, v in maps["clusters"].items()}
    return MapState(keys, txrs, addrs, clusters)


def desired_state(reg: Registry) -> MapState:
    txrs = {key: rec.tunnel_endpoint for key, rec in reg.transceivers.items()}
    # Every cluster with a transceiver here or a record: a ufrag naming any other is
    # drop_unknown_cluster, one naming a missing transceiver of these drop_unknown_txr.
    clusters = {cluster: CLUSTER_LOCAL for cluster, _ in txrs}
    for cid, rec in reg.clusters.items():
        clusters[cid] = CLUSTER_REMOTE if rec.registry else CLUSTER_LOCAL
    return MapState(dict(reg.keys), txrs, dict(Counter(txrs.values())), clusters)


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
    clusters = _diff(
        "clusters", current.clusters, wanted.clusters, str, lambda v: CLUSTER_KINDS.get(v, str(v))
    )

    def grows(c: Change) -> bool:
        return c.action == "add" or (c.action == "change" and int(c.new or 0) > int(c.old or 0))

    return [
        *(c for c in keys if c.action != "remove"),
        *(c for c in clusters if c.action != "remove"),
        *(c for c in addrs if grows(c)),
        *txrs,
        *(c for c in addrs if not grows(c)),
        *(c for c in clusters if c.action == "remove"),
        *(c for c in keys if c.action == "remove"),
    ]


def _key_struct(key: bytes) -> RoutingKey:
    return RoutingKey(int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"), 1, 0)


class EmptyGuard:
    """Believe an empty registry table only after it stayed empty for `grace` seconds.

    Emptying the maps would drop every call at once; a table that stays empty longer than the
    grace is real (the last transceiver really died). grace=math.inf never believes it.
    `hint` names the option that changes this, for the warning.
    """

    def __init__(
        self, grace: float, hint: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace = grace
        self.hint = hint
        self.clock = clock
        self.empty_since: dict[str, float] = {}

    def believe(self, table: str, empty: bool) -> bool:
        if not empty:
            self.empty_since.pop(table, None)
            return True
        if math.isinf(self.grace):
            return False
        since = self.empty_since.setdefault(table, self.clock())
        return self.clock() - since >= self.grace

    def guard(self, current: MapState, wanted: MapState) -> tuple[MapState, list[str]]:
        """`wanted`, with each table the registry has emptied replaced by the loaded one until
        the emptiness is believed; and a warning for each table kept."""
        warnings = []
        keys, txrs, addrs, clusters = (
            wanted.keys,
            wanted.transceivers,
            wanted.txr_addrs,
            wanted.clusters,
        )
        if current.keys and not self.believe("keys", not keys):
            keys = current.keys
            warnings.append(f"registry has no keys: kept the {len(keys)} loaded ({self.hint})")
        if current.transceivers and not self.believe("transceivers", not txrs):
            txrs, addrs = current.transceivers, current.txr_addrs
            clusters = {**current.clusters, **clusters}  # the kept transceivers' clusters
            warnings.append(
                f"registry has no transceivers: kept the {len(txrs)} loaded ({self.hint})"
            )
        return MapState(keys, txrs, addrs, clusters), warnings


@dataclass
class Outcome:
    """What one sync decided: the maps' state after it, the changes that get there, and the
    guard's warnings."""

    state: MapState
    changes: list[Change]
    warnings: list[str]


def apply(
    maps: RelayMaps,
    reg: Registry,
    *,
    dry_run: bool = False,
    guard: EmptyGuard | None = None,
    current: MapState | None = None,
) -> Outcome:
    """Diff the registry against the pinned maps and write the difference (unless dry_run).

    Without a guard an empty registry table empties the map."""
    current = read_state(maps) if current is None else current
    wanted = desired_state(reg)
    warnings: list[str] = []
    if guard is not None:
        wanted, warnings = guard.guard(current, wanted)
    changes = plan(current, wanted)
    if not dry_run:
        _write(maps, wanted, changes)
    return Outcome(wanted, changes, warnings)


def _write(maps: RelayMaps, wanted: MapState, changes: list[Change]) -> None:
    # A removed or changed transceiver: txr_gen gets a new value once the transceivers block is
    # written (right after, not before: flows may cache an endpoint looked up until then), so no
    # flow uses an endpoint it cached before the change. Once per sync: see next_txr_gen.
    stale = False
    for c in changes:
        if stale and c.table != "transceivers":
            bump_txr_gen(maps)
            stale = False
        _write_one(maps, wanted, c)
        stale = stale or (c.table == "transceivers" and c.action != "add")
    if stale:
        bump_txr_gen(maps)


def _write_one(maps: RelayMaps, wanted: MapState, c: Change) -> None:
    if c.table == "keys":
        kid = int(c.key)
        value = RoutingKey() if c.action == "remove" else _key_struct(wanted.keys[kid])
        maps["keys"].update(ct.c_uint32(kid), value)
    elif c.table == "clusters":
        if c.action == "remove":
            maps["clusters"].delete(ct.c_uint32(int(c.key)))
        else:
            maps["clusters"].update(
                ct.c_uint32(int(c.key)), ct.c_uint32(wanted.clusters[int(c.key)])
            )
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


def records_of(state: MapState) -> dict[tuple[int, int], TransceiverRecord]:
    """The map's transceivers as registry records (to keep them while removals are held)."""
    return {
        (c, i): TransceiverRecord(cluster=c, id=i, tunnel=f"{a}:{p}")
        for (c, i), (a, p) in state.transceivers.items()
    }


@dataclass
class SyncResult:
    outcome: Outcome
    problems: list[str]  # skipped registry entries, guard warnings, held removals
    draining: int  # registered transceivers that are draining
    seconds: float


@dataclass
class RegistrySync:
    """The control loop's registry -> maps job: one `step()` per pass.

    After Redis restarts (its run_id changes) removals wait `hold` seconds: transceivers
    re-register one by one within their refresh interval, and removing those not back yet
    would drop their calls. Additions and changes go through at once.
    """

    redis: Any
    prefix: str
    hold: float
    clock: Callable[[], float] = time.monotonic
    fleet: RemoteClusters | None = None  # remote clusters' transceivers, merged in each step
    guard: EmptyGuard = field(init=False)
    _run_id: str | None = None
    _hold_until: float = 0.0

    def __post_init__(self) -> None:
        self.guard = EmptyGuard(self.hold, "--empty-grace", self.clock)

    def step(self, maps: RelayMaps) -> SyncResult:
        """Raises redis.RedisError when Redis cannot be read (the maps are then untouched)."""
        started = self.clock()
        reg = read_registry(self.redis, prefix=self.prefix)
        if self.fleet is not None:
            reg.problems.extend(self.fleet.merge(reg))
        current = read_state(maps)
        held = []
        if self._redis_restarted():
            self._hold_until = self.clock() + self.hold
            log.warning("redis restarted: removals wait %.0f s for re-registration", self.hold)
        if self.clock() < self._hold_until:
            for key, rec in records_of(current).items():
                reg.transceivers.setdefault(key, rec)
            for kid, key in current.keys.items():
                reg.keys.setdefault(kid, key)
            held.append("redis restarted: removals wait for re-registration (--empty-grace)")
        outcome = apply(maps, reg, guard=self.guard, current=current)
        problems = reg.problems + outcome.warnings + held
        draining = sum(1 for t in reg.transceivers.values() if t.draining)
        return SyncResult(outcome, problems, draining, self.clock() - started)

    def _redis_restarted(self) -> bool:
        """True once each time the registry's Redis is a new process (its run_id changed)."""
        run_id = str(self.redis.info("server").get("run_id", ""))
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        return restarted
