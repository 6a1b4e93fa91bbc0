"""maps -> Redis: the flows this relay learned, written to the flow cache with a TTL
(`{prefix}:flow:...`, docs/wire-format.md §6) so that another relay can take a call over.

FlowExporter walks the kernel `flows` map a bounded number of entries per pass, in batches of
one syscall (BPF_MAP_LOOKUP_BATCH: a busy relay holds up to 1M flows, and one full walk per pass
would stall the control loop), writes flows it has not written yet, and re-writes a flow still
in the map before a third of its TTL is left. The batch cursor is a hash bucket index, so LRU
evictions under churn never send the walk back to the start.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from control import defaults
from datapath import bpfsys
from datapath.maps import FlowKey, FlowVal, PinnedMap, from_be16
from wire.registry import flow_key, flow_value

# A flow as the map keys it: (client_addr, vip_addr, client_port, vip_port), network-order ints.
RawFlow = tuple[int, int, int, int]


def raw_flow(key: FlowKey) -> RawFlow:
    return (key.client_addr, key.vip_addr, key.client_port, key.vip_port)


def redis_key_of(prefix: str, raw: RawFlow) -> str:
    client, vip, cport, vport = raw
    return flow_key(prefix, _addr(client), from_be16(cport), _addr(vip), from_be16(vport))


def _addr(be: int) -> str:
    # inet_ntoa: ten times faster than ipaddress, and this runs for every exported flow.
    return socket.inet_ntoa(be.to_bytes(4, sys.byteorder))


# One round trip and one command for a whole batch: packing thousands of pipelined SETs costs
# redis-py more than Redis spends running them. KEYS are flow keys, ARGV[1] the TTL in ms.
_SET_ALL = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
"""


@dataclass
class _Entry:
    value: tuple[int, int]
    written_at: float  # monotonic time of the last successful SET
    cycle: int  # the walk cycle that last saw the flow in the map


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
    ) -> None:
        self.flows = flows
        self.prefix = prefix
        self.ttl = ttl
        self.batch = batch
        self.cache: dict[RawFlow, _Entry] = {}
        self.cycle = 0
        self.last_count = 0  # flows seen by the last complete walk
        self._counting = 0
        self._cursor = bpfsys.BatchCursor()
        self._keys = (FlowKey * batch)()
        self._vals = (FlowVal * batch)()

    def _walk(self) -> tuple[list[tuple[RawFlow, tuple[int, int]]], bpfsys.BatchCursor, bool]:
        """Up to `batch` (flow, (cluster, id)) from the cursor on; the new cursor; at the end?"""
        cursor = bpfsys.BatchCursor(self._cursor.token)
        n = bpfsys.map_lookup_batch(self.flows.fd, cursor, self._keys, self._vals, self.batch)
        out = [
            (raw_flow(self._keys[i]), (self._vals[i].cluster, self._vals[i].id)) for i in range(n)
        ]
        if cursor.done:
            return out, bpfsys.BatchCursor(), True
        return out, cursor, False

    def step(self, r: Any) -> ExportResult:
        """One bounded pass. A Redis error propagates and the cursor stays, so nothing is
        skipped; flows already written keep their cache entry."""
        seen, cursor, done = self._walk()
        now = time.monotonic()
        due = []
        for raw, value in seen:
            entry = self.cache.get(raw)
            if entry is None or entry.value != value or now - entry.written_at > self.ttl / 3:
                due.append((raw, value))
            else:
                entry.cycle = self.cycle
        if due:
            ttl_ms = max(1, int(self.ttl * 1000))
            keys = [redis_key_of(self.prefix, raw) for raw, _ in due]
            values = [flow_value(*value) for _, value in due]
            r.register_script(_SET_ALL)(keys=keys, args=[ttl_ms, *values])
            for raw, value in due:
                self.cache[raw] = _Entry(value, now, self.cycle)
        self._counting += len(seen)
        self._cursor = cursor
        if done:
            # Flows the walk did not meet have left the map: forget them (Redis expires them).
            self.cache = {k: e for k, e in self.cache.items() if e.cycle == self.cycle}
            self.last_count = self._counting
            self._counting = 0
            self.cycle += 1
        return ExportResult(walked=len(seen), written=len(due), cycle_done=done)
