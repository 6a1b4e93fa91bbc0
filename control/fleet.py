"""Remote clusters: the transceivers of other regions, read from their own registries.

A relay serves its own cluster(s), whose transceivers register in the relay's registry, and any
remote cluster that has a record there (`{prefix}:cluster:{id}`, `relayctl clusters add`) naming
the Redis its transceivers register in. `RemoteClusters.merge` adds, every pass, each remote
cluster's transceivers (those of that cluster only) and its keys to the local view before the
sync writes the maps, so the program tunnels a remote call straight to its transceiver over the
backbone (docs/fleet.md says why that hop). `announce` registers this relay in each remote
registry, so the remote transceivers accept its tunnel datagrams (docs/security.md).

A remote registry that cannot be read keeps its last view for `grace` seconds: a backbone blip
must not drop that region's calls, the data plane outlives the control plane. After that its
transceivers leave the map (its calls stop; new ones are drop_unknown_txr). A remote registry is
never allowed to replace a local transceiver or key: the local registry wins, and the conflict
is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from control import defaults
from wire.redisconn import Backoff, connect, redact
from wire.registry import (
    ReachReport,
    Registry,
    RelayRecord,
    TransceiverRecord,
    read_registry,
    register_relay,
    report_reach,
)

log = logging.getLogger("relayctl.fleet")


@dataclass
class RemoteView:
    """One remote cluster's transceivers and its registry's keys, as last read."""

    transceivers: dict[tuple[int, int], TransceiverRecord]
    keys: dict[int, bytes]
    read_at: float  # monotonic


@dataclass
class RemoteRegistry:
    url: str
    client: Any
    backoff: Backoff = field(default_factory=Backoff)
    views: dict[int, RemoteView] = field(default_factory=dict)  # by cluster id
    up: bool | None = None
    error: str = ""
    reach_error: str = ""  # the last reach report's failure, logged once


@dataclass(frozen=True)
class ClusterStatus:
    registry: str  # redacted URL
    up: bool
    age: float  # seconds since its view was read (inf: never)
    transceivers: int


class RemoteClusters:
    def __init__(
        self,
        prefix: str,
        grace: float = defaults.REMOTE_GRACE,
        interval: float = defaults.REMOTE_INTERVAL,
        connect_fn: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        region: ReachReport | None = None,
    ) -> None:
        self.prefix = prefix
        self.region = region  # reported in each remote registry on each read (docs/fleet.md)
        self.grace = grace
        self.interval = interval
        self.clock = clock
        self._connect = connect_fn or (
            lambda url: connect(url, timeout=defaults.REMOTE_REDIS_TIMEOUT, retries=False)
        )
        self._registries: dict[str, RemoteRegistry] = {}
        self.status: dict[int, ClusterStatus] = {}

    def merge(self, reg: Registry) -> list[str]:
        """Add the remote clusters named by reg's cluster records to reg; the problems found."""
        import redis

        problems: list[str] = []
        wanted = {cid: rec.registry for cid, rec in reg.clusters.items() if rec.registry}
        for url in set(self._registries) - set(wanted.values()):
            self._registries.pop(url).client.close()
        self.status = {}
        by_url: dict[str, list[int]] = {}
        for cid, url in sorted(wanted.items()):
            by_url.setdefault(url, []).append(cid)
        for url, cids in by_url.items():
            remote = self._registries.get(url)
            if remote is None:
                try:
                    remote = self._registries[url] = RemoteRegistry(url, self._connect(url))
                except ValueError as exc:  # redis-py's URL parser
                    problems.append(f"cluster {cids[0]}: registry {redact(url)}: {exc}")
                    continue
            if self._due(remote, cids):
                try:
                    self._read(remote, cids)
                except redis.RedisError as exc:
                    remote.backoff.failed()
                    if remote.up is not False:
                        log.warning(
                            "remote registry %s unreachable: %s (keeping its last view up to"
                            " %.0f s)",
                            redact(url),
                            exc,
                            self.grace,
                        )
                    remote.up, remote.error = False, str(exc)
            now = self.clock()
            for cid in cids:
                view = remote.views.get(cid)
                age = now - view.read_at if view else float("inf")
                if view is not None and age > self.grace:
                    del remote.views[cid]
                    problems.append(
                        f"cluster {cid}: registry {redact(url)} unread for {age:.0f} s"
                        f" (> {self.grace:.0f} s): its transceivers left the map"
                    )
                    view = None
                elif remote.up is False:
                    kept = f"its view of {age:.0f} s ago is kept" if view else "never read"
                    problems.append(
                        f"cluster {cid}: registry {redact(url)} unreachable: {remote.error}; {kept}"
                    )
                if view is not None:
                    problems.extend(_add(reg, cid, view))
                self.status[cid] = ClusterStatus(
                    redact(url), bool(remote.up), age, len(view.transceivers) if view else 0
                )
        return problems

    def _due(self, remote: RemoteRegistry, cids: list[int]) -> bool:
        """Read a remote registry every REMOTE_INTERVAL (it is a backbone round trip or four
        away), or, while it fails, when its backoff says so."""
        if remote.up is False:
            return remote.backoff.ready()
        if any(cid not in remote.views for cid in cids):
            return True
        last = max((v.read_at for v in remote.views.values()), default=None)
        return last is None or self.clock() - last >= self.interval

    def _read(self, remote: RemoteRegistry, cids: list[int]) -> None:
        theirs = read_registry(remote.client, prefix=self.prefix)
        now = self.clock()
        for cid in cids:
            remote.views[cid] = RemoteView(
                {k: t for k, t in theirs.transceivers.items() if t.cluster == cid},
                dict(theirs.keys),
                now,
            )
        if remote.up is False:
            log.info("remote registry %s reachable again", redact(remote.url))
        remote.up, remote.error = True, ""
        remote.backoff.succeeded()
        if self.region is not None:
            self._report_reach(remote)

    def _report_reach(self, remote: RemoteRegistry) -> None:
        """This region reaches that registry (and, as it is in the cluster, over the same
        backbone, its transceivers): the front places this region's calls there."""
        import redis

        assert self.region is not None
        try:
            report_reach(remote.client, replace(self.region, at=time.time()), prefix=self.prefix)
        except redis.RedisError as exc:  # an ACL without it: the read still counts
            if remote.reach_error != str(exc):
                log.warning("reach report to %s: %s", redact(remote.url), exc)
            remote.reach_error = str(exc)

    def announce(self, rec: RelayRecord, ttl: float) -> None:
        """Register this relay in every remote registry that is up (best effort: the next
        announce retries one that failed)."""
        import redis

        for remote in self._registries.values():
            if remote.up is not True:
                continue
            try:
                register_relay(remote.client, rec, ttl, prefix=self.prefix)
            except redis.RedisError as exc:
                log.warning("announce to %s: %s", redact(remote.url), exc)

    def close(self) -> None:
        for remote in self._registries.values():
            remote.client.close()
        self._registries.clear()


def _add(reg: Registry, cid: int, view: RemoteView) -> list[str]:
    problems = []
    for key, rec in view.transceivers.items():
        if key in reg.transceivers:
            problems.append(
                f"cluster {cid}: transceiver {key[0]}/{key[1]} is registered here too: the local"
                " entry wins"
            )
            continue
        reg.transceivers[key] = rec
    for kid, key in view.keys.items():
        mine = reg.keys.setdefault(kid, key)
        if mine != key:
            problems.append(
                f"cluster {cid}: its registry's key {kid} differs from this registry's: routing"
                " keys are fleet-wide (docs/fleet.md); the local key wins"
            )
    return problems
