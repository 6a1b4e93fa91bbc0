"""Where a forwarded packet's time goes: the flow hit <-> decap cycle of `bench.bpf_paths`
(BPF_PROG_TEST_RUN, repeat mode, the two paths in turn), run by this build and by copies of it
with one piece taken out (stubbed) or, for the two lookups this build avoids, put back. Each
copy still cycles (the counters are checked for the full build); copies without a check are for
measuring only. All copies run interleaved in one sandbox, in a new order each trial; a row is
the fastest trial (noise on shared cores only ever adds time). A piece on one path only (the
encapsulation's checksum, the tunnel-link check) shows half its cost in the cycle's mean.

What it showed, and what changed for it (issue 12): two hash lookups per forwarded packet were
not needed. A client packet asked `vips` before `flows`; a flow's VIP is ours by construction
(relayctl load deletes the flows of a VIP it removes), so the flow is looked up first and only a
miss asks `vips`. Both directions asked `transceivers` for the flow's endpoint; the flow now
caches it under the map's generation `txr_gen`, which the controller bumps after removing or
moving a transceiver (docs/wire-format.md §4), so a removed transceiver still stops at once.
Each lookup is worth about 11-15 ns of the cycle's mean (the two rows "not in this build"), and
`bench.bpf_paths` shows the cycle against the previous revision in the same run. The price: a
datagram that is not ours (the host's own traffic on the relay's NIC) pays a flow miss before
its VIP lookup (`pass: not for us` about +20 ns), and a Binding request without a flow a flow
lookup before its tag is verified.

What is left is spread thin. The next hop (per-CPU cache, MAC rewrite, redirect) is the largest
piece, about 20 ns. Each stubbed check shows 10-13 ns, the tunnel-link check too, which is four
compares and cannot cost that by itself: taking any code out changes what the JIT and the CPU do
with the rest (layout, branch prediction), so these rows bound a piece from above rather than
measure it, and their sum is not the whole (the flow lookup, parsing, length checks, the header
writes, bpf_xdp_adjust_head, the TTL and the clock are the rest).

    .venv/bin/python -m bench.bpf_breakdown [--repeat N] [--trials N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from bcc import BPF

from bench import bpf_paths as paths
from bench.table import Table
from control.program import compile_relay, relay_source
from control.reasons import Reason
from lab.fibsandbox import NetnsWorker, fib_sandbox


@dataclass(frozen=True)
class Variant:
    piece: str
    how: str
    edits: tuple[tuple[str, str], ...]  # (text in bpf/, replacement), each must be found once
    cache: bool = True  # txr_gen set (flows use their cached endpoint)
    adds: bool = False  # the copy does more than this build (a lookup this build avoids)


VARIANTS = (
    Variant(
        "VIP lookup on every client packet",
        "the vips lookup before the flow lookup, as before",
        (
            (
                "\t\tfv = flows.lookup(&fk);\n\t\tif (!fv && !vips.lookup(&vip))\n"
                "\t\t\treturn REASON_PASS_NOT_OURS;",
                "\t\tif (!vips.lookup(&vip))\n\t\t\treturn REASON_PASS_NOT_OURS;\n"
                "\t\tfv = flows.lookup(&fk);",
            ),
        ),
        adds=True,
    ),
    Variant(
        "transceivers lookup on every packet",
        "txr_gen 0: no flow uses its cached endpoint",
        (),
        cache=False,
        adds=True,
    ),
    Variant(
        "next hop: cache, MACs, redirect",
        "fib_forward returns its reason at once",
        (
            (
                "\tstruct bpf_fib_lookup fib = {};\n",
                "\tif (fwd_reason)\n\t\treturn fwd_reason;\n\tstruct bpf_fib_lookup fib = {};\n",
            ),
        ),
    ),
    Variant(
        "bpf_redirect helper",
        "not called",
        (
            (
                "\tif (bpf_redirect(ifindex, 0) != XDP_REDIRECT)\n\t\treturn REASON_DROP_REDIRECT;",
                "",
            ),
        ),
    ),
    Variant(
        "per-CPU counters",
        "count_packet not called",
        (("\tcount_packet(reason, bytes);", "\t(void)bytes;"),),
    ),
    Variant(
        "client header checksum check",
        "ipv4_csum_ok not called",
        (("\tif (!ipv4_csum_ok(ip))\n\t\treturn REASON_DROP_BAD_IP_CSUM;", ""),),
    ),
    Variant(
        "inner header checksum check (decap)",
        "check_inner_udp4 without its checksum",
        (("\tif (!ipv4_csum_ok(ip))\n\t\treturn REASON_DROP_TUNNEL_BAD_INNER;", ""),),
    ),
    Variant(
        "outer header checksum (encap)",
        "left 0",
        (("\touter.check = (__sum16)~ipv4_hdr_sum(&outer); /* summed with check 0 */", ""),),
    ),
    Variant(
        "tunnel link check (decap)",
        "tunnel_link not called",
        (
            (
                "\tif (!tunnel_link(cfg, ctx->ingress_ifindex))\n"
                "\t\treturn REASON_DROP_TUNNEL_WRONG_LINK;",
                "",
            ),
        ),
    ),
)


def _edited(source: str, variant: Variant) -> str:
    for old, new in variant.edits:
        if source.count(old) != 1:
            raise RuntimeError(f"{variant.piece}: the text to stub is not in bpf/ exactly once")
        source = source.replace(old, new)
    return source


def _cycling(b: paths.Bench, cache: bool) -> None:
    """bench.bpf_paths' cycle, with flows using their cached endpoint or not (txr_gen 0)."""
    b.cycling()
    if not cache:
        b.relay[b"txr_gen"][b.relay[b"txr_gen"].Key(0)] = b.relay[b"txr_gen"].Leaf(0)


def run(repeat: int = 200_000, trials: int = 9) -> Table:
    repeat += repeat % 2
    frame = paths.client(paths.RTP)
    table = Table(
        "Flow hit <-> decap: each piece's ns per packet (cycle mean, this build)",
        ["piece", "copy measured", "this build", "copy", "piece costs", "share above XDP_PASS"],
    )
    progs: list[Any] = []
    with fib_sandbox(prefix="edgebrk") as sandbox, NetnsWorker(sandbox.path) as worker:
        try:
            trivial = BPF(text=paths.BASELINE_SRC)
            progs.append(trivial)
            base_fd = trivial.load_func(b"xdp_pass", BPF.XDP).fd
            source = relay_source()
            benches: dict[str, paths.Bench] = {}
            for variant in (Variant("this build", "-", ()), *VARIANTS):
                prog = compile_relay(source=paths._prologue(_edited(source, variant)))
                progs.append(prog)
                b = paths.Bench(sandbox, worker, prog, base_fd)
                _cycling(b, variant.cache)
                benches[variant.piece] = b
            full = benches["this build"]
            half = repeat // 2
            with full.counted({Reason.FWD_FLOW: half, Reason.FWD_DECAP: half}):
                full.run(full.fd, frame, repeat=repeat)
            best: dict[str, float] = {k: float("inf") for k in benches}
            trivial_ns = float("inf")
            order = list(benches.items())
            for trial in range(trials):
                trivial_ns = min(trivial_ns, full.run(base_fd, frame, repeat=repeat))
                # a new order each trial: no copy always runs first, or right after another
                shift = trial % len(order)
                for name, b in order[shift:] + order[:shift]:
                    best[name] = min(best[name], b.run(b.fd, frame, repeat=repeat))
        finally:
            for prog in progs:
                prog.cleanup()
    this = best["this build"]
    above = this - trivial_ns
    table.add("trivial XDP_PASS program", "-", "-", trivial_ns, "-", "-")
    table.add("this build, whole", "-", this, "-", above, "100 %")
    for v in VARIANTS:
        cost = best[v.piece] - this if v.adds else this - best[v.piece]
        share = "not in this build" if v.adds else f"{100 * cost / above:.0f} %"
        table.add(v.piece, v.how, this, best[v.piece], cost, share)
    table.notes += [
        f"repeat {repeat:,} per trial, fastest of {trials} interleaved trials per copy.",
        "piece costs: this build minus the copy without it; for the two rows marked 'not in "
        "this build', the copy minus this build (what this build saves).",
        "the rest (flow lookup, parse, length checks, encap/decap writes, adjust_head, TTL, "
        "clock) is the remainder: see the text above the table.",
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200_000)
    parser.add_argument("--trials", type=int, default=9)
    args = parser.parse_args()
    print(run(repeat=args.repeat, trials=args.trials).render_text())


if __name__ == "__main__":
    sys.exit(main())
