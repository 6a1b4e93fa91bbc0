"""Where a forwarded packet's time goes: the flow hit <-> decap cycle of `bench.bpf_paths`
(BPF_PROG_TEST_RUN, repeat mode, the two paths in turn), run by this build and by copies of it
with one piece taken out (stubbed), put back (the two lookups this build avoids), or done once
more (what the piece adds at the margin). Each copy still cycles (the counters are checked for
the full build); copies without a check are for measuring only. All copies run interleaved in
one sandbox, in a new order each trial; a load's figure is its fastest trial (noise on shared
cores only ever adds time). A piece on one path only (the encapsulation's checksum, the
tunnel-link check) shows half its cost in the cycle's mean.

Each copy is loaded several times and a row is its fastest load: where the kernel places a JIT
image moves the same program by up to 15-20 ns here (twelve loads of one build once fell into
two groups, 117-124 and 134-150 ns, by the image's address; the notes give this run's loads of
this build), and the fastest of eight loads is a fast one. One load against one load, as this
bench compared before, is a lottery larger than most pieces: it is why a check of four compares
once showed 14 ns.

What it showed, and what changed for it (issue 12): two hash lookups per forwarded packet were
not needed. A client packet asked `vips` before `flows`; a flow's VIP is ours by construction
(relayctl load deletes the flows of a VIP it removes), so the flow is looked up first and only a
miss asks `vips`. Both directions asked `transceivers` for the flow's endpoint; the flow now
caches it under the map's generation `txr_gen`, which the controller bumps after removing or
moving a transceiver (docs/wire-format.md §4), so a removed transceiver still stops at once.
Each lookup is worth a hash map call (rows "not in this build"), and `bench.bpf_paths`
shows the cycle against the previous revision in the same run. The price: a datagram that is
not ours (the host's own traffic on the relay's NIC) pays a flow miss before its VIP lookup,
and a Binding request without a flow a flow lookup before its tag is verified.

Then the encapsulation: it built the outer header in a stack struct and copied it, and the
Ethernet header, into the packet byte by byte (the uapi `ethhdr` is packed, so clang assumes
byte alignment): about 100 instructions on the client path. It now writes each field once
through typed pointers, sums the outer checksum from the fields in registers (`encap_csum`),
and copies MACs as 16-bit words (`bpf/eth.h`, also used by the decap and the next hop). Against
the previous revision, ten loads each, alternating and compared pair by pair: 1.5 ns off the
cycle's mean. Instructions that wait for nothing are nearly free on this CPU; calls are not.

Then the flow lookup, the largest call left (about 20 ns: the kernel's LRU hash code is four
calls and returns). IPv4 flow hits and decaps now read this CPU's copy of the flow
(`bpf/flowcopy.h`: a direct-mapped per-CPU array in front of `flows`, as the next-hop cache is
in front of the FIB), an array lookup the verifier inlines, and ask `flows` about once per flow,
CPU and second. What had kept it out was coherence: a flow moved or removed must stop at once on
every CPU, and a generation bumped for every new flow would make every copy miss on a busy relay.
It does not need one: a create or move bumps only its own slot's version (one shared array), the
controller bumps `txr_gen` after the flow writes it makes, and what nothing announces (an LRU
eviction) lives at most to the end of the copy's clock unit. Against the previous revision, six
loads each, compared pair by pair: 26-27 ns off the cycle's mean (the row "flows lookup on every
packet").

Then the clock. One more bpf_ktime_get_coarse_ns at the entry point cost 13-15 ns at the
margin (more than a redirect), and every forwarded packet made that call once. The coarse clock
only moves when the tick updates the timekeeper, which is when jiffies moves too, and
bpf_jiffies64 is inlined by the verifier (one load; one more of it measured 0 ns). So each CPU
keeps its last reading with the jiffy it was taken in (`bpf/clock.h`, map `clock_readings`), and
calls the helper only when jiffies has moved: once per jiffy and CPU on a busy relay. The
price is one tick more of lag at most (the tick moves jiffies just before the timekeeper), in a
clock whose users count 250 ms (next-hop expiry), about 1.07 s (`seen`, the copies' tick) or
ufrag epochs. The row "coarse clock helper on every packet" is what the reading saves (12 ns in
the run that introduced it).

Then the bench itself. This bench used to put this build 10-13 ns slower than `bench.bpf_paths`
did: a trial here outlasts FLOW_IDLE_S (10 s), and the cycle's reverse flow (the client as a
VIP) has no client of its own to keep it live, so its decaps looked their transceiver up again,
which a call's flow, kept live by its talking client, does not. Each run now first marks the
cycle's flows seen (`Bench.keep_live`), and fails if a flow went idle during it
(`Bench.check_live`, which `bench.bpf_paths` runs after its cycle rows too). The row
"transceivers lookup on every packet" doubled with it: it had measured the client path's lookup
only. With both flows live, this build is about 51-52 ns above the trivial program here, as in
`bench.bpf_paths` (48-53), at a repeat of 200,000 and of 1,000,000 alike.

What is left is mostly the program itself: the two calls every forwarded packet still makes
(bpf_xdp_adjust_head and bpf_redirect) and the dependent loads
and compares of the parse and the checks, which no single stub shows. One more hash map lookup
costs about 16-21 ns, one more bpf_redirect 6-9, two more bpf_xdp_adjust_head 11-21, while
taking an inline check out (the three checksums, the tunnel-link check) saves 0-4 ns each, and
doing the client checksum twice measured faster (the barrier between the two changes how clang
allocates registers for the rest of the path: code generation and placement move more than the
checks do). This machine's kernel returns from every call through the SRSO "Safe RET" thunk
(`spec_rstack_overflow: Vulnerable: Safe RET, no microcode`), which makes calls dearer than on a
host whose microcode covers it.

No check was given up for any of this. Further levers, not taken: the redirect (an edge host
that reaches clients and transceivers through one NIC sends with XDP_TX and makes no redirect
call at all); IPv6 flows, which have no copies yet.

    .venv/bin/python -m bench.bpf_breakdown [--repeat N] [--trials N] [--loads N]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

from bcc import BPF

from bench import bpf_paths as paths
from bench.table import Table
from control.program import PROG_FUNC, compile_relay, load_xdp_fn, relay_source
from control.reasons import Reason
from lab.fibsandbox import NetnsWorker, fib_sandbox

LOADS = 8  # loads of each copy: a JIT image's placement moves its time (see the text above)


@dataclass(frozen=True)
class Variant:
    piece: str
    how: str
    edits: tuple[tuple[str, str], ...]  # (text in bpf/, replacement), each must be found once
    # what the copy is: "stub" (a piece taken out), "avoided" (a lookup this build no longer
    # does, put back), "one more" (a piece done twice: what it adds at the margin)
    kind: str = "stub"


# The entry point's first line: "one more" copies put their extra work right after it, where
# both paths of the cycle run it.
ENTRY = paths.ENTRY + "\n{\n\t__u64 bytes"


_REDIRECT = "\tif (bpf_redirect(ifindex, 0) != XDP_REDIRECT)\n\t\treturn REASON_DROP_REDIRECT;"


def _at_entry(code: str) -> tuple[tuple[str, str], ...]:
    return ((ENTRY, ENTRY.replace("\t__u64 bytes", code + "\t__u64 bytes")),)


VARIANTS = (
    Variant(
        "VIP lookup on every client packet",
        "the vips lookup before the flow lookup, as before",
        (
            (
                "\t\tfv = flow_lookup(&fk, 1, now);\n\t\tif (!fv && !vips.lookup(&vip))\n"
                "\t\t\treturn REASON_PASS_NOT_OURS;",
                "\t\tif (!vips.lookup(&vip))\n\t\t\treturn REASON_PASS_NOT_OURS;\n"
                "\t\tfv = flow_lookup(&fk, 1, now);",
            ),
        ),
        kind="avoided",
    ),
    Variant(
        "transceivers lookup on every packet",
        "no flow uses its cached endpoint",
        (("\tif (gen && live && cache >> TXR_CACHE_GEN_SHIFT == gen) {", "\tif (0) {"),),
        kind="avoided",
    ),
    Variant(
        "flows lookup on every packet",
        "no flow copy is used",
        (
            (
                "\tif (!tagp || !versionp || !genp)\n\t\treturn flows.lookup(fk);",
                "\treturn flows.lookup(fk);",
            ),
        ),
        kind="avoided",
    ),
    Variant(
        "coarse clock helper on every packet",
        "clock_now calls bpf_ktime_get_coarse_ns, no per-CPU reading",
        (("\t\t*now = coarse_ns();", "\t\t*now = bpf_ktime_get_coarse_ns();"),),
        kind="avoided",
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
    Variant("bpf_redirect helper", "not called", ((_REDIRECT, ""),)),
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
        "encap_csum not called, 0 written",
        (("\tip->check = encap_csum(tos, tot_len, saddr, daddr);", "\tip->check = 0;"),),
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
    # What one more of a thing costs on top of the whole program: a hash map lookup is a call
    # into the kernel, an inline check is not.
    Variant(
        "a hash map lookup (vips, a miss)",
        "one more, at the entry point",
        _at_entry(
            "\t{\n\t\tstruct vip_key k = {.addr = 1, .port = 1};\n\n"
            "\t\tvoid *volatile found = vips.lookup(&k); /* kept: volatile */\n\n"
            "\t\t(void)found;\n\t}\n"
        ),
        kind="one more",
    ),
    Variant(
        "bpf_redirect helper, again",
        "one more call, in fib_send",
        ((_REDIRECT, _REDIRECT + "\n" + _REDIRECT),),
        kind="one more",
    ),
    Variant(
        "bpf_xdp_adjust_head, two more calls",
        "-4 then +4 bytes, at the entry point",
        _at_entry(
            "\tif (bpf_xdp_adjust_head(ctx, -4) || bpf_xdp_adjust_head(ctx, 4))\n"
            "\t\treturn XDP_ABORTED;\n"
        ),
        kind="one more",
    ),
    Variant(
        "client header checksum check, again",
        "one more, after the first",
        (
            (
                "\tif (!ipv4_csum_ok(ip))\n\t\treturn REASON_DROP_BAD_IP_CSUM;",
                "\tif (!ipv4_csum_ok(ip))\n\t\treturn REASON_DROP_BAD_IP_CSUM;\n"
                '\tasm volatile("" ::: "memory"); /* the second is not folded into the first */\n'
                "\tif (!ipv4_csum_ok(ip))\n\t\treturn REASON_DROP_BAD_IP_CSUM;",
            ),
        ),
        kind="one more",
    ),
)


def _edited(source: str, variant: Variant) -> str:
    for old, new in variant.edits:
        if source.count(old) != 1:
            raise RuntimeError(f"{variant.piece}: the text to stub is not in bpf/ exactly once")
        source = source.replace(old, new)
    return source


def _load_again(prog: BPF) -> Any:
    """Another load of prog's entry point, with the same maps: the kernel places each JIT image
    anew. The first load stays in bcc's cache (cleanup closes it); the caller closes this one."""
    name = PROG_FUNC.encode()
    first = prog.funcs.pop(name)
    try:
        return load_xdp_fn(prog)
    finally:
        prog.funcs[name] = first


def run(repeat: int = 200_000, trials: int = 9, loads: int = LOADS) -> Table:
    if loads < 1 or trials < 1:
        raise ValueError("--loads and --trials must be at least 1")
    repeat += repeat % 2
    frame = paths.client(paths.RTP)
    table = Table(
        "Flow hit <-> decap: each piece's ns per packet (cycle mean, this build)",
        ["piece", "copy measured", "this build", "copy", "piece costs", "share above XDP_PASS"],
    )
    progs: list[Any] = []
    extra: list[Any] = []
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
                b.cycling()
                benches[variant.piece] = b
            # each copy's further loads in turn, so that no copy's images sit together
            fds = {name: [b.fd] for name, b in benches.items()}
            for _ in range(loads - 1):
                for name, b in benches.items():
                    extra.append(_load_again(b.relay))
                    fds[name].append(extra[-1].fd)
            full = benches["this build"]
            half = repeat // 2
            for fd in fds["this build"]:
                full.keep_live()
                with full.counted({Reason.FWD_FLOW: half, Reason.FWD_DECAP: half}):
                    full.run(fd, frame, repeat=repeat)
                full.check_live()
            best = {name: [float("inf")] * loads for name in benches}
            trivial_ns = float("inf")
            order = [(name, i) for name in benches for i in range(loads)]
            for trial in range(trials):
                trivial_ns = min(trivial_ns, full.run(base_fd, frame, repeat=repeat))
                # a new order each trial: no copy always runs first, or right after another
                shift = trial * loads % len(order)
                for name, i in order[shift:] + order[:shift]:
                    # a trial outlasts FLOW_IDLE_S: the cycle's flows kept live for each run
                    benches[name].keep_live()
                    ns = benches[name].run(fds[name][i], frame, repeat=repeat)
                    benches[name].check_live()
                    best[name][i] = min(best[name][i], ns)
        finally:
            for fn in extra:
                os.close(fn.fd)
            for prog in progs:
                prog.cleanup()
    fastest = {name: min(v) for name, v in best.items()}
    this = fastest["this build"]
    above = this - trivial_ns
    table.add("trivial XDP_PASS program", "-", "-", trivial_ns, "-", "-")
    table.add("this build, whole", "-", this, "-", above, "100 %")
    for v in VARIANTS:
        cost = this - fastest[v.piece] if v.kind == "stub" else fastest[v.piece] - this
        share = {"stub": f"{100 * cost / above:.0f} %", "avoided": "not in this build"}
        table.add(v.piece, v.how, this, fastest[v.piece], cost, share.get(v.kind, "at the margin"))
    spread = sorted(best["this build"])
    table.notes += [
        f"repeat {repeat:,} per trial, {trials} interleaved trials; each copy loaded {loads} "
        "times (its own JIT image each), a figure is its fastest load's fastest trial.",
        f"this build's {loads} loads: {', '.join(f'{ns:.0f}' for ns in spread)} ns: where the "
        "kernel places an image moves it by more than most pieces cost (see the text above).",
        "piece costs: this build minus the copy without it; for the rows marked 'not in "
        "this build', the copy minus this build (what this build saves); for the rows 'at the "
        "margin', the copy (which does the piece once more) minus this build.",
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200_000)
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--loads", type=int, default=LOADS, help="loads of each copy")
    args = parser.parse_args()
    if args.loads < 1 or args.trials < 1:
        parser.error("--loads and --trials must be at least 1")
    print(run(repeat=args.repeat, trials=args.trials, loads=args.loads).render_text())


if __name__ == "__main__":
    sys.exit(main())
