"""GStreamer's webrtcbin (libnice ICE) calls through the VIP and the XDP relays."""

from __future__ import annotations

import json
import subprocess

import pytest

from lab.edge import EdgeLab
from lab.peer import lab_key_file
from tests.e2e.e2ehelp import delta, drops, report

# no `browser` mark: that one means Chromium; a real client's call gets the browser tests' timeout
pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

# Debian's GStreamer bindings live in Debian's Python, not the venv (see lab/gstclient.py)
GST_PYTHON = "/usr/bin/python3"


def gst_call(spawn: object, url: str, *extra: str) -> tuple[int, dict, str]:
    proc = spawn(  # type: ignore[operator]
        [GST_PYTHON, "-m", "lab.gstclient", *extra, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=90)
    lines = out.decode().strip().splitlines()
    assert lines, (proc.returncode, err.decode()[-2000:])
    return proc.returncode, json.loads(lines[-1]), err.decode()[-2000:]


def test_libnice_call_through_the_relay(lab: EdgeLab) -> None:
    before = [lab.stats(r.index) for r in lab.relays]
    code, result, err = gst_call(
        lab.spawn_client, lab.txrs[1].url, "--api-keys", str(lab_key_file(lab.tmpdir))
    )
    assert code == 0 and result["state"] == "connected", (result, err)
    assert result["packets"] >= 50 and result["error"] is None, result
    after = [lab.stats(r.index) for r in lab.relays]

    def total(reason: str) -> int:
        return sum(delta(a, b, reason) for a, b in zip(after, before, strict=True))

    assert total("fwd_decap") >= 50 and total("fwd_flow") >= 50  # the echo crossed XDP
    assert total("fwd_stun_new") >= 1  # libnice's checks reached a transceiver via a relay
    dropped = [drops({k: delta(a, b, k) for k in a}) for a, b in zip(after, before, strict=True)]
    assert not any(dropped), dropped
    report("libnice call", setup_ms=result["setup_ms"], packets=result["packets"])
