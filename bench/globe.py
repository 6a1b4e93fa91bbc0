"""The nearest relay and the backbone against the public internet, per client region, in the
globe lab (lab/globe.py; docs/fleet.md).

For each client region, one aiortc call to a transceiver in a far region; in the same call, the
same probes (authenticated STUN Binding requests on the call's credentials, answered by the
transceiver, one in flight, a lost one waits 1 s) take two paths to the one global VIP:

- **nearest relay + backbone**: from the client's address, whose route reaches the VIP at its own
  region's relay; the relay tunnels the probe across the backbone straight to the far
  transceiver (no loss, the backbone's delay);
- **public internet**: from the client's second address, whose route reaches the VIP at the far
  region's relay over the lab's "internet": a quarter longer than the backbone, 4 ms of jitter
  and 1 % loss on each region's leg (lab.globe INTERNET_*).

Per path: RTT p50 and p99, loss (probes without an answer) and jitter (the mean absolute
difference of consecutive RTTs, as RFC 3550's interarrival jitter smooths it), and the ratios
internet / backbone. The lab's numbers are chosen, not measured on the real internet: what this
shows is that the design keeps the first hop short and the rest on the backbone, and what each
path then costs; the real gain depends on how much worse a region's internet path is than its
backbone (where the two are alike, the backbone only adds its relay hop: ~0.1 ms here).

    python -m bench.globe [--probes N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys

from bench.table import Table
from lab.calldriver import CallDriver
from lab.globe import ALT_HOST, GlobeLab

PROBES = int(os.environ.get("BENCH_GLOBE_PROBES", "100"))
FAR = {0: 1, 1: 0, 2: 0}  # client region -> the region of the transceiver it calls


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _jitter(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    return statistics.mean(abs(b - a) for a, b in itertools.pairwise(values))


def measure(probes: int = PROBES) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with GlobeLab(internet=FAR) as lab:
        for i, k in FAR.items():
            d = CallDriver(lab.client(i), [lab.txr_url(k)])  # type: ignore[arg-type]
            try:
                d.wait_call()
                d.wait_rtp(0, 20)
                paths = {
                    "nearest relay + backbone": d.rtt(0, probes),
                    "public internet to the far relay": d.rtt(
                        0, probes, source=lab.addr(i, ALT_HOST)
                    ),
                }
            finally:
                d.close()
            for path, rtts in paths.items():
                rows.append({
                    "from": lab.regions[i].name, "to": lab.regions[k].name, "path": path,
                    "probes": probes, "answered": len(rtts), "rtts": rtts,
                    "backbone_ms": 2 * lab.one_way_ms(i, k),
                })  # fmt: skip
    return rows


def table(rows: list[dict[str, object]]) -> Table:
    t = Table(
        "The same call's probes, nearest relay + backbone vs straight over the public internet",
        ["from", "to", "path", "probes", "RTT p50 ms", "RTT p99 ms", "loss %", "jitter ms",
         "p50 x backbone path", "loss x"],
    )  # fmt: skip
    base: dict[str, dict[str, float]] = {}
    for r in rows:
        rtts = list(r["rtts"])  # type: ignore[call-overload]
        p50, p99 = _q(rtts, 0.5), _q(rtts, 0.99)
        loss = 100 * (1 - int(r["answered"]) / int(r["probes"]))  # type: ignore[call-overload]
        key = f"{r['from']}>{r['to']}"
        if key not in base:
            base[key] = {"p50": p50, "loss": loss}
            ratio, loss_ratio = "1.00", "-"
        else:
            ratio = f"{p50 / base[key]['p50']:.2f}"
            loss_ratio = f"{loss / base[key]['loss']:.1f}" if base[key]["loss"] else "inf"
        t.add(r["from"], r["to"], r["path"], r["probes"], f"{p50:.1f}", f"{p99:.1f}",
              f"{loss:.1f}", f"{_jitter(rtts):.2f}", ratio, loss_ratio)  # fmt: skip
    t.notes.append(
        "lab delays: backbone one way us-east-eu-west 35 ms, us-east-ap-south 55 ms, "
        "eu-west-ap-south 60 ms; the internet path 1.25x that, jitter 4 ms and loss 1 % on each "
        "region's leg (two legs each way)"
    )
    t.notes.append("loss x: the internet path's loss over the backbone path's (inf: none there)")
    return t


def run() -> Table:
    return table(measure())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.globe",
        description="RTT, loss and jitter through the nearest relay and the backbone against "
        "the public internet, per client region, in the globe lab (needs root).",
    )
    ap.add_argument("--probes", type=int, default=PROBES, help="per path (default %(default)s)")
    args = ap.parse_args(argv)
    print(table(measure(args.probes)).render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
