"""The forwarding-limit bench's parts: the kernel generator's copies really leave, reach the
sink, every one is sunk or counted refused, the relay counts every frame the sink saw; nothing
is left attached or behind."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from bench import relay_mpps
from lab.fibsandbox import NetnsWorker, fib_sandbox

pytestmark = pytest.mark.lab

PACKETS = 20 * relay_mpps.FANOUT


def _gen_drops(rig: relay_mpps.Rig) -> int:
    """XDP_DROP verdicts of the generator's program (gen1's rx queue)."""
    stats = rig.link_stats(relay_mpps.GEN_LINK[1])
    return sum(v for k, v in stats.items() if k.endswith("_xdp_drops"))


def test_the_generator_sends_exactly_its_budget_and_stops() -> None:
    with fib_sandbox("edgempps") as sandbox, NetnsWorker(sandbox.path) as worker:
        rig = relay_mpps.Rig(sandbox, worker)
        try:
            path = relay_mpps._paths()[0]
            with pytest.raises(ValueError, match="multiple of"):
                rig.blast(path.frame, path.into, relay_mpps.FANOUT + 1)
            for _ in range(2):  # a second run starts from a clean count
                blast = rig.blast(path.frame, path.into, PACKETS)
                # Exactly the budget: each copy sunk or refused by a full ring, none beyond.
                assert blast.sent == PACKETS and blast.sunk + blast.refused == PACKETS
                assert blast.sunk > 0
                assert blast.offered_mpps > 0 and blast.forwarded_mpps > 0
            state = rig.gen[b"state"]
            assert state[0].rounds == 0  # the budget is spent: the circulating frame is gone
            # Only the frame a blast sent circulates: the kernel's own frames on gen0 (IPv6,
            # another length) would each become another generator.
            state[0] = state.Leaf(5, 0, 0, len(path.frame))
            dropped = _gen_drops(rig)
            ipv6 = path.frame[:12] + b"\x86\xdd" + path.frame[14:]
            for stray in (ipv6, path.frame[:-1]):
                rig.inject(stray, relay_mpps.GEN_LINK[0])
            deadline = time.monotonic() + 10
            while _gen_drops(rig) < dropped + 2:  # both seen (and dropped) by it
                assert time.monotonic() < deadline, "the generator never saw the stray frames"
                time.sleep(0.01)
            assert state[0].rounds == 5 and state[0].first_ns == 0
        finally:
            rig.close()


def test_every_row_sinks_every_frame_and_the_sandbox_is_gone() -> None:
    table = relay_mpps.measure(packets=PACKETS)
    assert len(table.rows) == 8
    for path, program, alone, offered, forwarded, _ratio, sunk, refused in table.rows:
        assert float(alone) > 0 and float(offered) > 0 and float(forwarded) > 0
        sunk_n, refused_n = int(sunk.replace(",", "")), int(refused.replace(",", ""))
        if program.startswith("Python"):
            # A socket drops what it cannot take; some must come through, never more than sent.
            assert 0 < sunk_n <= PACKETS, (path, sunk)
        else:
            # Copies an XDP program forwards all arrive or are counted refused by a full ring.
            assert sunk_n + refused_n == PACKETS, (path, program, sunk, refused)
    relay_rows = [r for r in table.rows if r[1] == "XDP relay"]
    assert [r[0] for r in relay_rows] == [p.name for p in relay_mpps._paths()]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"edgempps-{os.getpid()}-" not in left  # ours, not a parallel run's
