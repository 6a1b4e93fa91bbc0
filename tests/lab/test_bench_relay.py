"""`python -m bench` runs the relay benchmark in a lab and writes its markdown (small counts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab import netns
from lab.topology import sweep_lab
from tests.lab.labhelp import assert_clean

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `python -m bench`; also returns its pid, which names any lab it built."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            sweep_lab(f"{netns.LAB_BASE}{proc.pid}x")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def test_relay_benchmark_measures_both_relays(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc, pid = _bench(
        "--only",
        "relay_pps",
        "--write",
        "--out",
        str(out),
        BENCH_RELAY_PACKETS="3000",
        BENCH_RELAY_PINGS="50",
    )
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for name in ("XDP (native)", "Python userspace (lab/pyrelay.py)"):
        m = re.search(rf"{re.escape(name)}\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s", proc.stdout)
        assert m, proc.stdout
        rows[name] = [int(v.replace(",", "")) for v in m.groups()]
    sent, forwarded, seen = rows["XDP (native)"]
    assert sent == 3000 and 0 < seen <= forwarded <= sent
    sent, forwarded, seen = rows["Python userspace (lab/pyrelay.py)"]
    assert sent == 3000 and 0 < forwarded <= sent
    assert re.search(r"XDP vs Python\s+[\d.]+x", proc.stdout)
    doc = out.read_text()
    assert doc.startswith("# Benchmarks")
    assert "Machine: " in doc and f"{os.cpu_count()} CPUs" in doc
    assert "## Relay throughput and latency" in doc
    assert "| relay | sent | forwarded | stand-in saw |" in doc
    assert "`python -m bench --only relay_pps`" in doc
    assert_clean(f"{netns.LAB_BASE}{pid}x")  # the benchmark's lab is gone, pins too


def test_unknown_benchmark_is_a_clear_error() -> None:
    proc, _ = _bench("--only", "nope")
    assert proc.returncode == 2
    assert "unknown benchmark" in proc.stderr and "Traceback" not in proc.stderr
