"""The forwarding-limit bench's parts: live frames really leave, reach the sink, and the relay
counts every frame the sink saw; nothing is left attached or behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench import relay_mpps
from datapath.bpfsys import prog_test_run_live

pytestmark = pytest.mark.lab


def test_live_frames_need_a_real_frame() -> None:
    with pytest.raises(ValueError, match="Ethernet header"):
        prog_test_run_live(0, b"short", ingress_ifindex=1, repeat=1)


def test_every_row_sinks_every_frame_and_the_sandbox_is_gone() -> None:
    table = relay_mpps.measure(packets=20_000)
    assert len(table.rows) == 8
    for path, program, offered, forwarded, _ratio, sunk in table.rows:
        assert float(offered) > 0 and float(forwarded) > 0
        if program.startswith("Python"):
            # A socket drops what it cannot take; some must come through, never more than sent.
            assert 0 < int(sunk.replace(",", "")) <= 20_000, (path, sunk)
        else:
            # Live frames that an XDP program forwards all arrive: a lost one is a broken rig.
            assert sunk == "20,000", (path, program, sunk)
    relay_rows = [r for r in table.rows if r[1] == "XDP relay"]
    assert [r[0] for r in relay_rows] == [p.name for p in relay_mpps._paths()]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"edgempps-{os.getpid()}-" not in left  # ours, not a parallel run's
