"""bench.calls_scale, briefly: a few real calls and a bare echo, both paced the same way; every
paced packet is echoed, the server's CPU is read in both windows, and the table derives its
figures from the windows as its notes say."""

from __future__ import annotations

import pytest

from bench import calls_scale
from bench.calls_scale import Result, Window

pytestmark = [pytest.mark.timeout(240)]


def test_a_few_calls_against_the_bare_echo() -> None:
    bare, txr = calls_scale.measure((4,))
    assert bare.idle is None and bare.rss_kib_per_call is None
    assert txr.idle is not None and txr.rss_kib_per_call is not None
    for r in (bare, txr):
        w = r.media
        # 4 calls at 50 packets/s over the window: sent on time, and all of it echoed
        assert w.sent == pytest.approx(4 * w.seconds / 0.02, rel=0.1), (r.server, w.sent)
        assert w.echoes >= w.sent - 4, (r.server, w.echoes, w.sent)
        assert r.sent > w.sent and r.lost == 0, (r.server, r.sent, r.lost)  # every one echoed
        assert w.cpu_s > 0 and w.seconds > 0
    assert txr.idle.cpu_s > 0  # RTCP, consent and timers of the idle calls
    rows = calls_scale.table([bare, txr]).rows
    assert [row[0] for row in rows] == [bare.server, txr.server]
    assert rows[1][5].startswith("x") and rows[0][5] == "-"


def test_the_table_derives_from_the_windows() -> None:
    media = Window(cpu_s=1.0, wait_s=0.0, bench_cpu_s=0.5, seconds=10.0, echoes=25_000, sent=25_000)
    idle = Window(cpu_s=0.1, wait_s=0.0, bench_cpu_s=0.1, seconds=2.0, echoes=0, sent=0)
    base = Window(cpu_s=0.5, wait_s=0.0, bench_cpu_s=0.5, seconds=10.0, echoes=25_000, sent=25_000)
    rows = calls_scale.table(
        [
            Result("bare", 50, base, None, None, 0.1, 30_000, 0),
            Result("txr", 50, media, idle, 200.0, 0.1, 40_000, 4),
        ]
    ).rows
    txr = dict(zip(calls_scale.table([]).headers, rows[1], strict=True))
    assert txr["server CPU % core"] == "10.0"
    assert txr["CPU/call (% core)"] == "0.200" and txr["calls/core (derived)"] == "500"
    assert txr["vs bare echo"] == "x2.00"
    assert txr["idle CPU/call (% core)"] == "0.100"  # 5 % of a core over 50 calls
    # (1.0 s - 10 s x the idle 0.05 s/s) / 25,000 echoes
    assert txr["us per echo"] == "20.0"
    assert txr["echoes lost %"] == "0.01"  # 4 of the run's 40,000
