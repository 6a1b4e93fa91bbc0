"""`python -m bench.bpf_paths` runs end to end on a small budget, exactly as documented; the bench
itself fails when a row's counters show it measured another path than the one it names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROWS = (
    "trivial XDP_PASS program",
    "pass: not for us",
    "drop: no flow",
    "drop: bad tag (SipHash)",
    "flow hit <-> decap, mean",
    "STUN known <-> decap, mean",
    "flow hit: encap + fib",
    "STUN known: ufrag + encap",
    "STUN new flow",
    "decap: tunnel -> client",
    "drop: decap, no flow (reverse miss)",
    "drop: decap, another txr's flow",
    "drop: TTL 1 client packet",
    "drop: live flow not moved",
    "drop: ufrag over its budget",
)


def test_bench_runs_and_checks_its_rows() -> None:
    cmd = [sys.executable, "-m", "bench.bpf_paths", "--samples", "50", "--repeat", "2000"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for name in ROWS:
        rows = [line for line in lines if line.strip().startswith(name)]
        assert rows, f"no row {name!r} in:\n{done.stdout}"
        ns = float(rows[0].split()[-3].replace(",", ""))
        assert ns > 0
    assert sum("trivial XDP_PASS program" in line for line in lines) == 2
    # main's build measured in the same run, next to this one (a figure, not "-")
    flow = next(line for line in lines if line.strip().startswith("flow hit <-> decap"))
    assert flow.split()[-4] != "-"
