"""Flow export at 1 M flows: how long `relayctl run` takes to walk the relay's kernel flow map
once and keep every flow's Redis key alive, against the flow keys' TTL.

A real relay is loaded in a lab netns (its LRU `flows` map holds MAX_FLOWS = 1,048,576), filled
with bpf() updates, then churned by another process inserting new flows (the LRU evicts old
ones, as a busy relay's would) while FlowExporter runs its passes against a real redis-server.
A pass is what the control loop does every --interval (INTERVAL s): the cycle time is
passes x (INTERVAL + the pass's own work). A flow stays fresh while a cycle is under 2/3 of the
TTL (it is re-written once a third of the TTL has passed, and met again within one cycle).
The baseline is the previous default, FLOW_BATCH 4,096 entries per pass, in the same run.
`python -m bench.flow_export` prints the table.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from typing import Any

from bench.table import Table
from control import defaults
from control.flowexport import FlowExporter
from datapath import bpfsys
from datapath.maps import FlowKey, FlowVal, RelayMaps, be16
from lab.netns import BPFFS
from lab.redis_server import RedisServer
from lab.topology import RelayLab

FLOWS = 1_048_576
CHURN = 20_000  # new flows per second while the exporter runs (each evicts an old one)
OLD_BATCH = 4096


def _key(i: int) -> FlowKey:
    # 16 M client addresses in 10.0.0.0/8 x a few ports: distinct keys, hashed all over.
    return FlowKey(
        int.from_bytes(bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF]), "little"),
        int.from_bytes(bytes([198, 18, 0, 1]), "little"),
        be16(1024 + (i >> 24)),
        be16(3478),
    )


def _fill(fd: int, start: int, count: int) -> None:
    val = FlowVal(1, 0, 7, time.monotonic_ns())
    for i in range(start, start + count):
        bpfsys.map_update(fd, _key(i), val)


def _churn(pin: str, start: int, rate: float, stop: Any) -> None:
    """In another process: insert `rate` new flows a second until `stop` is set."""
    fd = bpfsys.obj_get(pin)
    i, t0 = start, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate) + start
        if i < due:
            _fill(fd, i, min(1000, due - i))
            i += min(1000, due - i)
        else:
            time.sleep(0.005)


def _redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _cycle(exp: FlowExporter, r: Any) -> tuple[int, float, float, int, float]:
    """One full walk: (passes, work seconds, worst pass seconds, SETs, CPU seconds used by the
    exporter and by Redis: what the cycle costs on a machine with a core to spare)."""
    passes, work, worst, written = 0, 0.0, 0.0, 0
    cpu0, rcpu0 = time.process_time(), _redis_cpu(r)
    while True:
        t0 = time.perf_counter()
        res = exp.step(r)
        dt = time.perf_counter() - t0
        passes, work, worst, written = passes + 1, work + dt, max(worst, dt), written + res.written
        if res.cycle_done:
            cpu = time.process_time() - cpu0 + _redis_cpu(r) - rcpu0
            return passes, work, worst, written, cpu


def run() -> Table:
    interval, ttl = defaults.INTERVAL, defaults.FLOW_TTL
    table = Table(
        f"Flow export of a full 1 M-entry LRU map, churned by {CHURN:,} new flows/s "
        f"(TTL {ttl:.0f} s, interval {interval} s)",
        ["entries per pass", "cycle", "passes", "worst pass (ms)", "SETs", "CPU (s)",
         "cycle (s)", "cycle / TTL", "on a free core (s)", "/ TTL"],
    )  # fmt: skip
    with RelayLab(transceivers=1) as lab, RedisServer() as server:
        pin = str(BPFFS / lab.name / "flows")
        with RelayMaps(BPFFS / lab.name) as maps:
            flows = maps["flows"]
            _fill(flows.fd, 0, FLOWS)
            r = server.client()
            ctx = multiprocessing.get_context("fork")
            stop = ctx.Event()
            churn = ctx.Process(target=_churn, args=(pin, FLOWS, CHURN, stop), daemon=True)
            churn.start()
            try:
                for batch in (OLD_BATCH, defaults.FLOW_BATCH):
                    r.flushall(asynchronous=True)
                    exp = FlowExporter(flows, prefix="edge", ttl=ttl, batch=batch)
                    for what in ("first (writes all)", "steady (refreshes due)"):
                        if what.startswith("steady"):  # a third of the TTL later: all due
                            exp.clock = lambda: time.monotonic() + ttl / 3 + 1
                        passes, work, worst, written, cpu = _cycle(exp, r)
                        cycle = passes * interval + work
                        free = passes * interval + cpu
                        print(
                            f"batch {batch}, {what}: {passes} passes, {work:.1f} s work, "
                            f"{cpu:.1f} s CPU, worst {worst * 1000:.0f} ms, {written} SETs",
                            file=sys.stderr,
                        )
                        table.add(
                            f"{batch:,}" + (" (old default)" if batch == OLD_BATCH else ""),
                            what,
                            passes,
                            worst * 1000,
                            written,
                            cpu,
                            cycle,
                            f"{cycle / ttl:.2f}",
                            free,
                            f"{free / ttl:.2f}",
                        )
                    if batch == OLD_BATCH:
                        del exp
            finally:
                stop.set()
                churn.join(timeout=10)
            r.close()
    table.notes.append(
        "cycle (s) = passes x interval + the passes' own wall time: the control loop sleeps "
        "--interval between passes. CPU (s): the exporter's and Redis's CPU time for the cycle; "
        "'on a free core' = passes x interval + CPU, the cycle where neither waits for a core "
        "(this machine's cores are shared, so wall times include waiting for them). "
        "Fresh within the TTL needs cycle / TTL < 0.67; docs/control-loop.md."
    )
    return table


if __name__ == "__main__":
    print(run().render_text())
