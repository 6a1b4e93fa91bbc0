"""The flow export keeps every flow's Redis key alive under churn, at the defaults' proportions.

bench/flow_export.py measures 1 M flows at FLOW_TTL; here the same walk runs on 40 k flows of a
real loaded relay's map with the TTL, the interval and FLOW_BATCH all scaled by 40 k / 1 M, so
the number of passes per cycle, and so the cycle's share of the TTL, is the one 1 M flows see.
Flows leave and enter the map all the time (as LRU eviction and new calls do); every flow that
has been in the map for 2/3 of the TTL must have its key in Redis, at every check.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import pytest
import redis

from control import defaults
from control.flowexport import FlowExporter, redis_key_of
from datapath.maps import FlowKey, FlowVal, RelayMaps, be16, be32
from tests.control.ctl_lab import RELAY_ADDR, Lab
from tests.control.runlab import BPFFS

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]
FLOWS = 40_000
SCALE = FLOWS / 1_048_576
TTL = max(3.0, defaults.FLOW_TTL * SCALE)
INTERVAL = defaults.INTERVAL * SCALE
BATCH = max(1, round(defaults.FLOW_BATCH * SCALE))
CHURN = 20_000 * SCALE  # new flows per second (bench/flow_export.py churns 20 k/s at 1 M)


def _key(i: int) -> FlowKey:
    addr = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
    return FlowKey(int.from_bytes(addr, "little"), be32(RELAY_ADDR), be16(2000), be16(3478))


class _Churn:
    """The exporter's passes at its pacing with the map's churn, on a thread of their own: the
    checks (tens of thousands of lookups each) must not slow the passes, as nothing slows the
    control loop's passes in production."""

    def __init__(
        self, flows: object, exp: FlowExporter, r: redis.Redis, inside: OrderedDict
    ) -> None:
        self.flows, self.exp, self.r, self.inside = flows, exp, r, inside
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.warm = threading.Event()  # the first (warm-up) cycle is done
        self.cycles: list[float] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="flow-export", daemon=True)

    def _run(self) -> None:
        try:
            nxt, churned = FLOWS, 0.0
            cycle_start = time.monotonic()
            while not self.stop.is_set():
                res = self.exp.step(self.r)
                now = time.monotonic()
                with self.lock:
                    if res.cycle_done:
                        if self.exp.cycle == 1:  # warm-up: the whole map appeared at once
                            for i in self.inside:
                                self.inside[i] = now
                            self.warm.set()
                        else:
                            self.cycles.append(now - cycle_start)
                        cycle_start = now
                    # Churn: the oldest flows leave, new ones arrive.
                    churned += CHURN * INTERVAL
                    while churned >= 1:
                        old, _ = self.inside.popitem(last=False)
                        self.flows.delete(_key(old))  # type: ignore[attr-defined]
                        self.flows.update(_key(nxt), VAL)  # type: ignore[attr-defined]
                        self.inside[nxt] = now
                        nxt, churned = nxt + 1, churned - 1
                self.stop.wait(INTERVAL)  # the control loop's --interval between passes
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.warm.set()

    def due(self, now: float) -> list[int]:
        with self.lock:
            return [i for i, at in self.inside.items() if now - at > TTL * 2 / 3]


VAL = FlowVal(1, 0, 7, time.monotonic_ns())


def test_every_flow_stays_fresh_under_churn(loaded: Lab, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    checker = redis.Redis.from_url(redis_url)
    with RelayMaps(BPFFS / loaded.name) as maps:
        flows = maps["flows"]
        inside: OrderedDict[int, float] = OrderedDict()  # flow -> when it entered the map
        for i in range(FLOWS):
            flows.update(_key(i), VAL)
            inside[i] = 0.0  # counted from the end of the first cycle
        exp = FlowExporter(flows, prefix="edge", ttl=TTL, batch=BATCH)
        churn = _Churn(flows, exp, r, inside)
        churn.thread.start()
        checks = 0
        try:
            assert churn.warm.wait(60), "the warm-up cycle never ended"
            start = time.monotonic()
            # Three TTLs and at least ten checks (a busy machine makes each check slower).
            while churn.error is None and (time.monotonic() - start < 3 * TTL or checks < 10):
                churn.stop.wait(TTL / 6)
                now = time.monotonic()
                # A new flow is written within one cycle, an old one re-written within one
                # cycle after a third of the TTL: with cycles under 2/3 of the TTL, every flow
                # in the map for that long has a live key.
                due = churn.due(now)
                pipe = checker.pipeline(transaction=False)
                for i in due:
                    pipe.exists(redis_key_of("edge", bytes(_key(i))))
                # Missing and still in the map (an LRU map may evict early, per CPU: those
                # left the map, and their keys may expire).
                missing = [
                    i
                    for i, there in zip(due, pipe.execute(), strict=True)
                    if not there and flows.lookup(_key(i)) is not None
                ]
                assert not missing, (
                    f"{len(missing)} of {len(due)} flows in the map for 2/3 TTL have no key in "
                    f"Redis (cycles so far: {churn.cycles})"
                )
                checks += 1
        finally:
            churn.stop.set()
            churn.thread.join(30)
    assert churn.error is None, churn.error
    r.flushall()
    r.close()
    checker.close()
    cycles = churn.cycles
    assert checks >= 10 and len(cycles) >= 2
    assert max(cycles) < TTL * 2 / 3, (cycles, TTL)
    assert abs(exp.last_count - FLOWS) <= CHURN  # the walk meets every flow once
