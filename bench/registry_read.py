"""How long the relay's registry read takes when the database also holds the flow cache.

`wire.registry.read_registry` finds transceivers through the `{prefix}:txrs` index set; the
baseline, measured in the same run on the same data, is a SCAN for `{prefix}:txr:*`, the way it
would be found without the index. `python -m bench.registry_read` prints the table.
"""

from __future__ import annotations

import time
from typing import Any

from bench.table import Table
from lab.redis_server import RedisServer
from wire import registry
from wire.registry import TransceiverRecord

TRANSCEIVERS = 10
FLOW_COUNTS = (0, 10_000, 50_000)
ROUNDS = 20


def _median_ms(fn: Any) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[ROUNDS // 2] * 1000


def _scan_read(r: Any) -> None:
    names = list(r.scan_iter(match="edge:txr:*", count=1000))
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    pipe.execute()


def run() -> Table:
    table = Table(
        f"Registry read, {TRANSCEIVERS} transceivers (median of {ROUNDS})",
        ["flow keys in the db", "index read (ms)", "SCAN read (ms)", "SCAN / index"],
    )
    with RedisServer() as server:
        r = server.client()
        for i in range(TRANSCEIVERS):
            registry.register(r, TransceiverRecord(1, i, f"198.18.2.{i + 2}:5000"))
        written = 0
        for count in FLOW_COUNTS:
            pipe = r.pipeline(transaction=False)
            for i in range(written, count):
                pipe.set(f"edge:flow:198.18.1.2:{i}:198.18.100.1:3478", "1:1", ex=600)
            pipe.execute()
            written = count
            index_ms = _median_ms(lambda: registry.read_registry(r))
            scan_ms = _median_ms(lambda: _scan_read(r))
            table.add(count, index_ms, scan_ms, f"x{scan_ms / index_ms:.1f}")
        r.close()
    table.notes.append(
        "command: python -m bench.registry_read (a private redis-server on a unix socket)"
    )
    return table


if __name__ == "__main__":
    print(run().render_text())
