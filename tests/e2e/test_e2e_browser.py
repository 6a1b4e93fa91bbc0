"""Headless Chromium in the client namespace calls through the VIP and the XDP relays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lab.edge import EdgeLab
from lab.peer import lab_key_file

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.timeout(150)]


def test_chromium_call_through_the_relay(lab: EdgeLab) -> None:
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.fail("/usr/bin/chromium is missing: run `make install` (Debian package chromium)")
    before = [lab.stats(r.index) for r in lab.relays]
    proc = lab.spawn_client(
        [
            sys.executable,
            "-m",
            "lab.browsercall",
            "--api-keys",
            str(lab_key_file(lab.tmpdir)),
            lab.txrs[1].url,
            "50",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=120)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0 and result["state"] == "connected", (result, err[-2000:])
    assert result["packets"] > 50 and result["energy"] > 0
    after = [lab.stats(r.index) for r in lab.relays]
    decap = sum(a["fwd_decap"] - b["fwd_decap"] for a, b in zip(after, before, strict=True))
    fwd = sum(a["fwd_flow"] - b["fwd_flow"] for a, b in zip(after, before, strict=True))
    assert decap >= 50 and fwd >= 50  # every echoed packet crossed a relay's XDP program
    assert sum(a["fwd_stun_new"] - b["fwd_stun_new"] for a, b in zip(after, before, strict=True))
