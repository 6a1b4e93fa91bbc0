"""`make demo-fleet` (lab/demo_fleet.py): a call from every region, placed by the front at the
nearest cluster, carried by the client's own region's relay; it exits 0 and leaves nothing
behind, also on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.topology import sweep_lab
from tests.lab.labhelp import assert_clean

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lab.demo_fleet", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _prefix(out: str) -> str:
    found = re.search(r"building lab (\S+)", out)
    assert found, out
    return found.group(1)


def test_demo_fleet_places_a_call_from_every_region() -> None:
    proc = _run("--seconds", "1")
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
    prefix = _prefix(out)
    try:
        assert proc.returncode == 0, err
        rows = re.findall(r"^(\S+)\s+(\S+)\s+(\d)\s+[\d.]+\s+([\d.]+)\s", out, re.M)
        # region, relay, cluster, setup, RTT p50: each region's own relay; the nearest cluster
        placed = {region: (relay, cluster) for region, relay, cluster, _ in rows}
        assert placed == {
            "us-east": ("us-east", "1"),
            "eu-west": ("eu-west", "2"),
            "ap-south": ("ap-south", "2"),  # Mumbai is nearer Frankfurt than New York
        }, out
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
