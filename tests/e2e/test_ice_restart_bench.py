"""bench/ice_restart.py runs with one restart per row and reports every row's restart."""

from __future__ import annotations

import os

import pytest

from lab.browsercall import CHROMIUM

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.timeout(240)]


def test_ice_restart_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    import bench.ice_restart as ice_restart

    monkeypatch.setattr(ice_restart, "RESTARTS", 1)
    table = ice_restart.run()
    rows = [(str(r[0]), str(r[1]), r[2], r[3]) for r in table.rows]
    assert rows == [  # (client, when, restarts, failed)
        ("aiortc", "at once", 1, 0),
        ("Chromium", "on ICE 'disconnected'", 1, 0),
        ("Chromium", "at once", 1, 0),
    ]
    for row in table.rows:
        assert float(str(row[8])) > 0 and float(str(row[9])) >= float(str(row[8]))  # gap ms
        assert float(str(row[5])) > 0  # the PATCH was timed
    assert table.rows[1][4] != "-" and table.rows[2][4] == "-"  # detection only when waited for
