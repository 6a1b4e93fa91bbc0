"""What `relayctl stats`, `flows` and `map show` report: plain data (for --json) and tables."""

from __future__ import annotations

import ctypes as ct
import time
from collections.abc import Sequence
from typing import Any

from control.reasons import Reason
from control.sync import CLUSTER_KINDS, key_fingerprint, read_state
from datapath.maps import RelayMaps, from_be16, from_be32, from_in6
from wire.addr import format_addr_port


def stats(maps: RelayMaps) -> dict[str, dict[str, int]]:
    """Packets and bytes per reason name, summed over CPUs; every known reason is present."""
    out: dict[str, dict[str, int]] = {}
    counters = maps["counters"]
    slots = counters.max_entries
    for slot in range(max(slots, len(Reason))):
        per_cpu = counters.lookup(ct.c_uint32(slot))
        if per_cpu is None:
            if slot < len(Reason):
                out[Reason(slot).label] = {"packets": 0, "bytes": 0}
            continue
        packets = sum(c.packets for c in per_cpu)
        nbytes = sum(c.bytes for c in per_cpu)
        if slot < len(Reason):
            out[Reason(slot).label] = {"packets": packets, "bytes": nbytes}
        elif packets:  # a reason newer than this relayctl
            out[f"reason_{slot}"] = {"packets": packets, "bytes": nbytes}
    return out


def flows(maps: RelayMaps, limit: int | None = None) -> list[dict[str, Any]]:
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
    txrs = read_state(maps).transceivers
    out: list[dict[str, Any]] = []
    # IPv4 flows, then IPv6 ones ("[addr]:port")
    entries = ((key, val, from_be32) for key, val in maps["flows"].items())
    entries6 = ((key, val, from_in6) for key, val in maps["flows6"].items())
    for key, val, addr in _chain(entries, entries6):
        if limit is not None and len(out) >= limit:
            break
        tunnel = txrs.get((val.cluster, val.id))
        out.append(
            {
                "client": format_addr_port(addr(key.client_addr), from_be16(key.client_port)),
                "vip": format_addr_port(addr(key.vip_addr), from_be16(key.vip_port)),
                "cluster": val.cluster,
                "transceiver": val.id,
                "tunnel": f"{tunnel[0]}:{tunnel[1]}" if tunnel else None,
                "age_s": round(max(0, now - val.created_ns) / 1e9, 3),
            }
        )
    return out


def _chain(*its: Any) -> Any:
    """The iterators one after the other, lazily (a --limit walks no more than it shows)."""
    for it in its:
        yield from it


def map_contents(maps: RelayMaps) -> dict[str, Any]:
    state = read_state(maps)
    cfg = maps["config"].lookup(ct.c_uint32(0))
    vips = sorted(
        [(v.value, f"{from_be32(k.addr)}:{from_be16(k.port)}") for k, v in maps["vips"].items()]
        + [
            (v.value, format_addr_port(from_in6(k.addr), from_be16(k.port)))
            for k, v in maps["vips6"].items()
            if k.port  # port 0: the address entry, not a VIP
        ]
    )
    return {
        "config": {"tunnel": f"{from_be32(cfg.tunnel_addr)}:{from_be16(cfg.tunnel_port)}"},
        "vips": [v for _, v in vips],
        "keys": {str(k): key_fingerprint(v) for k, v in sorted(state.keys.items())},
        "transceivers": [
            {"cluster": c, "id": i, "tunnel": f"{a}:{p}"}
            for (c, i), (a, p) in sorted(state.transceivers.items())
        ],
        "txr_addrs": {f"{a}:{p}": n for (a, p), n in sorted(state.txr_addrs.items())},
        "clusters": {
            str(c): CLUSTER_KINDS.get(k, str(k)) for c, k in sorted(state.clusters.items())
        },
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, c in enumerate(row):
            numeric = n > 0 and isinstance(rows[n - 1][i], int | float)
            parts.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(c: object) -> str:
    if isinstance(c, int):
        return f"{c:,}"
    return "-" if c is None else str(c)
