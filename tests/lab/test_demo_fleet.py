"""`make demo-fleet` (lab/demo_fleet.py): a call from every region (and with DEMO_BROWSER=1 a
headless Chromium call from every region too), placed by the front at the nearest cluster,
carried by the client's own region's relay; it exits 0 and leaves nothing behind, also on
Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.browsercall import CHROMIUM
from lab.topology import sweep_lab
from tests.lab.labhelp import assert_clean

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


# Each region's own relay; the nearest cluster (Mumbai is nearer Frankfurt than New York).
PLACED = {"us-east": ("us-east", "1"), "eu-west": ("eu-west", "2"), "ap-south": ("ap-south", "2")}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lab.demo_fleet", *args],
        cwd=REPO,
        env={**os.environ, "DEMO_BROWSER": "0", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _prefix(out: str) -> str:
    found = re.search(r"building lab (\S+)", out)
    assert found, out
    return found.group(1)


COLUMNS = ("region", "client", "relay", "cluster", "setup", "rtt", "rtt99", "sent", "echoed",
           "loss", "gap")  # fmt: skip


def _table(out: str, client: str) -> list[dict[str, str]]:
    """The table's rows of `client` (aiortc, chromium), by column."""
    rows = [dict(zip(COLUMNS, line.split(), strict=True)) for line in out.splitlines()
            if len(line.split()) == len(COLUMNS) and line.split()[1] == client]  # fmt: skip
    return [r for r in rows if r["cluster"].isdigit()]


def _rows(out: str, client: str) -> list[tuple[str, str, str, str]]:
    """(region, relay, cluster, RTT p50) of the table's rows of `client`."""
    return [(r["region"], r["relay"], r["cluster"], r["rtt"]) for r in _table(out, client)]


def _demo(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = _run(*args, env=env)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
    return proc.returncode, out, err


def test_demo_fleet_places_a_call_from_every_region() -> None:
    rc, out, err = _demo("--seconds", "1")
    prefix = _prefix(out)
    try:
        assert rc == 0, err
        rows = _rows(out, "aiortc")
        assert {region: (relay, cluster) for region, relay, cluster, _ in rows} == PLACED, out
        assert not _rows(out, "chromium"), out  # no browser without DEMO_BROWSER=1
        rtt = {region: float(r) for region, _, _, r in rows}
        assert rtt["ap-south"] >= 120 > rtt["eu-west"]  # the backbone both ways, 2 x 60 ms
        assert "OK: 3 calls" in out
    finally:
        sweep_lab(prefix)
    assert_clean(prefix)


def test_demo_fleet_interrupted_removes_the_lab() -> None:
    proc = _run("--seconds", "30")
    assert proc.stdout is not None
    prefix = _prefix(proc.stdout.readline())
    line = proc.stdout.readline()  # blocks until the lab is up (or the demo died)
    assert line.startswith("lab up"), (line, proc.poll())
    time.sleep(2)  # the calls are being placed: interrupt them there
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130 and "interrupted: lab removed" in err, err
    assert "Traceback" not in err
    assert_clean(prefix)


@pytest.mark.browser
def test_demo_fleet_with_chromium_places_a_browser_call_from_every_region() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    rc, out, err = _demo("--seconds", "1", env={"DEMO_BROWSER": "1"})
    prefix = _prefix(out)
    try:
        assert rc == 0, err
        aiortc, chromium = _rows(out, "aiortc"), _rows(out, "chromium")
        assert {region: (relay, cluster) for region, relay, cluster, _ in aiortc} == PLACED, out
        assert len(chromium) == 3, out  # one Chromium row per region, each placed as aiortc's
        assert {region: (relay, cluster) for region, relay, cluster, _ in chromium} == PLACED, out
        rtt = {region: float(r) for region, _, _, r in chromium}
        assert rtt["ap-south"] >= 120 > rtt["eu-west"]  # Chromium's pair RTT: the backbone too
        assert "OK: 3 calls and 3 Chromium calls" in out
        for row in _table(out, "chromium"):  # loss and the longest gap, measured in the page
            assert float(row["loss"]) < 5 and 0 < float(row["gap"]) < 1000, row
            assert int(row["sent"]) > 0 and int(row["echoed"]) >= 50, row
    finally:
        sweep_lab(prefix)
    assert_clean(prefix)
