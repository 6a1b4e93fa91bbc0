"""maps -> Redis: the flows this relay learned, written to the flow cache with a TTL
(`{prefix}:flow:...`, docs/wire-format.md §6) so that another relay can take a call over.

FlowExporter walks the kernel `flows` map a bounded number of entries per pass (FLOW_BATCH),
in chunks of one syscall each (BPF_MAP_LOOKUP_BATCH), writes flows it has not written yet, and
re-writes a flow still in the map once a third of its TTL has passed. The batch cursor is a hash
bucket index, so LRU evictions under churn never send the walk back to the start.

Fresh within the TTL: a flow written at t is met again within one cycle C after t + TTL/3 and
re-written, so its key lives as long as C < 2/3 TTL. At 1 M flows a cycle is
1 M / FLOW_BATCH passes of INTERVAL s (bench/flow_export.py measures it; docs/control-loop.md).
Writes go out as one pipelined round trip of Lua calls (wire.registry.SET_FLOWS) of WRITE_CHUNK
flows each, packed 18 bytes a flow: Redis formats the keys, which costs it less than Python
formatting them and redis-py packing them; thousands of SETs in one script would stall Redis.
The cache keeps per flow its 12 key bytes and one int (value, time written): ~130 bytes a flow.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from typing import Any

from control import defaults
from datapath import bpfsys
from datapath.maps import FlowKey, FlowVal, PinnedMap
from wire.registry import SET_FLOWS, flow_key, flow_record

SYSCALL_BATCH = 8192  # entries read per BPF_MAP_LOOKUP_BATCH
MAX_CHUNK = 1 << 20
WRITE_CHUNK = 2048  # SETs per Lua call (a few ms of Redis time each)
KEY_SIZE = 12  # FlowKey: client addr, VIP addr (network order), client port, VIP port

# A flow as the map keys it: its 12 key bytes (compact: a relay's cache holds up to 1 M).
RawFlow = bytes


def raw_flow(key: FlowKey) -> RawFlow:
    return bytes(key)


def redis_key_of(prefix: str, raw: RawFlow) -> str:
    # inet_ntoa: ten times faster than ipaddress, and this runs for every exported flow.
    return flow_key(
        prefix,
        socket.inet_ntoa(raw[0:4]),
        int.from_bytes(raw[8:10], "big"),
        socket.inet_ntoa(raw[4:8]),
        int.from_bytes(raw[10:12], "big"),
    )


_TIME_BITS = 40  # written_at in ms of time.monotonic(): 35 years


def _pack(value: tuple[int, int], written_at: float) -> int:
    cluster, txr_id = value
    return (((cluster << 32) | txr_id) << _TIME_BITS) | (
        int(written_at * 1000) & ((1 << _TIME_BITS) - 1)
    )


def _value_of(packed: int) -> int:
    return packed >> _TIME_BITS


def written_at(packed: int) -> float:
    return (packed & ((1 << _TIME_BITS) - 1)) / 1000


@dataclass
class ExportResult:
    walked: int  # map entries read this pass
    written: int  # SETs sent (new, moved or refreshed flows)
    cycle_done: bool  # the walk reached the end of the map this pass


class FlowExporter:
    """Writes the flows of one relay's map to Redis; call `step(redis)` once per pass."""

    def __init__(
        self,
        flows: PinnedMap,
        *,
        prefix: str,
        ttl: float = defaults.FLOW_TTL,
        batch: int = defaults.FLOW_BATCH,
        clock: Any = time.monotonic,
    ) -> None:
        self.flows = flows
        self.prefix = prefix
        self.ttl = ttl
        self.batch = batch
        self.clock = clock
        # Flows met by the walk: `cache` those of the last full cycle not met yet in this one,
        # `_met` those met in this one (moved over as they are met); what is left in `cache`
        # when a cycle ends has left the map.
        self.cache: dict[RawFlow, int] = {}
        self._met: dict[RawFlow, int] = {}
        self.cycle = 0
        self.last_count = 0  # flows seen by the last complete walk
        self._counting = 0
        self._cursor = bpfsys.BatchCursor()
        n = min(batch, SYSCALL_BATCH)
        self._keys = (FlowKey * n)()
        self._vals = (FlowVal * n)()
        self._script: Any = None

    def known(self) -> dict[RawFlow, int]:
        """Every flow the exporter remembers writing -> its packed (value, written_at)."""
        return {**self.cache, **self._met}

    def forget(self) -> None:
        """Write every flow again (Redis may have restarted empty); still bounded per pass."""
        self.cache.clear()
        self._met.clear()

    def _walk(self) -> tuple[list[tuple[RawFlow, tuple[int, int]]], bpfsys.BatchCursor, bool]:
        """Up to `batch` (flow, (cluster, id)) from the cursor on; the new cursor; at the end?

        Each syscall asks for a whole chunk (the kernel returns whole hash buckets, never more
        than asked: ENOSPC when one bucket holds more, then the chunk grows)."""
        cursor = bpfsys.BatchCursor(self._cursor.token)
        out: list[tuple[RawFlow, tuple[int, int]]] = []
        while not cursor.done and (not out or len(out) + len(self._keys) <= self.batch):
            try:
                n = bpfsys.map_lookup_batch(
                    self.flows.fd, cursor, self._keys, self._vals, len(self._keys)
                )
            except bpfsys.BpfError as exc:
                if exc.errno != errno.ENOSPC or len(self._keys) >= MAX_CHUNK:
                    raise
                self._keys = (FlowKey * (2 * len(self._keys)))()
                self._vals = (FlowVal * len(self._keys))()
                continue
            keys = bytes(self._keys)[: n * KEY_SIZE]
            vals = self._vals
            out += [
                (keys[i * KEY_SIZE : (i + 1) * KEY_SIZE], (vals[i].cluster, vals[i].id))
                for i in range(n)
            ]
        if cursor.done:
            return out, bpfsys.BatchCursor(), True
        return out, cursor, False

    def step(self, r: Any) -> ExportResult:
        """One bounded pass. A Redis error propagates and the cursor stays, so nothing is
        skipped; flows already written keep their cache entry."""
        seen, cursor, done = self._walk()
        now = self.clock()
        refresh = self.ttl / 3
        due = []
        met = self._met
        for raw, value in seen:
            packed = met.get(raw)
            if packed is None:
                packed = self.cache.get(raw)
            vint = (value[0] << 32) | value[1]
            if packed is None or _value_of(packed) != vint or now - written_at(packed) > refresh:
                due.append((raw, value))
            else:
                met[raw] = packed
                self.cache.pop(raw, None)
        if due:
            self._write(r, due)
            for raw, value in due:
                met[raw] = _pack(value, now)
                self.cache.pop(raw, None)
        self._counting += len(seen)
        self._cursor = cursor
        if done:
            # Flows the walk did not meet have left the map: forget them (Redis expires them).
            self.cache, self._met = self._met, {}
            self.last_count = self._counting
            self._counting = 0
            self.cycle += 1
        return ExportResult(walked=len(seen), written=len(due), cycle_done=done)

    def _write(self, r: Any, due: list[tuple[RawFlow, tuple[int, int]]]) -> None:
        if self._script is None or self._script.registered_client is not r:
            self._script = r.register_script(SET_FLOWS)
        ttl_ms = max(1, int(self.ttl * 1000))
        pipe = r.pipeline(transaction=False)
        for i in range(0, len(due), WRITE_CHUNK):
            blob = b"".join(flow_record(raw, *v) for raw, v in due[i : i + WRITE_CHUNK])
            self._script(keys=[], args=[self.prefix, ttl_ms, blob], client=pipe)
        pipe.execute()
