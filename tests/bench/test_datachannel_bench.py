"""bench.datachannel, briefly: both servers echo, the table has a row per server and size, and
the on-CPU reading moves with real work."""

from __future__ import annotations

import os
import time

import pytest

from bench import datachannel

pytestmark = pytest.mark.timeout(120)


def test_oncpu_seconds_of_this_process_moves() -> None:
    before = datachannel.oncpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert datachannel.oncpu_seconds(os.getpid()) - before >= 0.15


def test_short_run_measures_both_servers() -> None:
    table = datachannel.run({100: 10, 65536: 2})
    assert [(r[0], r[1], r[2]) for r in table.rows] == [
        ("transceiver (Opus pass-through)", "100 B", 10),
        ("transceiver (Opus pass-through)", "64 KB", 2),
        ("plain aiortc", "100 B", 10),
        ("plain aiortc", "64 KB", 2),
    ]
    for row in table.rows:
        p50, p99, cpu = row[3], row[4], row[5]
        assert 0 < p50 <= p99 < 5000 and cpu >= 0
