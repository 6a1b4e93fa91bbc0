"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from lab.calldriver import CallDriver
from lab.edge import EdgeLab

MAX_GAP_MS = 200.0  # 20 ms packets: a gap this long is ten lost packets in a row
CONSENT_INTERVAL_MAX_MS = 6000  # aioice sends consent checks every 5 s x (0.8..1.2)


def delta(after: dict[str, int], before: dict[str, int], reason: str) -> int:
    return after.get(reason, 0) - before.get(reason, 0)


def drops(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.startswith("drop_") and v}


def carrier(lab: EdgeLab, driver: CallDriver, call: int) -> tuple[int, int]:
    """(relay index, transceiver id) carrying a call: exactly one relay has its flow."""
    found = lab.carrier(tuple(driver.calls[call]["local"]))
    assert len(found) == 1, f"call {call} is in {len(found)} relays' flow maps: {found}"
    return found[0]


def report(name: str, **values: object) -> None:
    """One line of measurements, printed under -s (the numbers the docs quote)."""
    print(f"\n[e2e] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
