"""Data channels through the real XDP relays: an aiortc client and headless Chromium in the
client namespace open `oai-events` on a call to the VIP; JSON text and binary messages of 0 B ..
64 KB come back identical while audio is echoed, and the SCTP packets cross the relays' XDP
program (decap counters) with no drops."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import pytest

from lab.browsercall import CHROMIUM
from lab.channelclient import SIZES
from lab.edge import EdgeLab
from lab.peer import lab_key_file
from tests.e2e.e2ehelp import drops, report

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

MESSAGES = 2 + 2 * len(SIZES)  # the two empty messages, then text and binary of every size
# SCTP DATA chunks carry at most ~1180 bytes (aiortc's 1200-byte packets): the echoes of one
# round are at least this many datagrams from the transceiver to the client.
MIN_SCTP_PACKETS = sum(2 * (n // 1200) for n in SIZES)


def _relay_totals(lab: EdgeLab) -> dict[str, int]:
    totals: dict[str, int] = {}
    for r in lab.relays:
        for k, v in lab.stats(r.index).items():
            totals[k] = totals.get(k, 0) + v
    return totals


def _run(lab: EdgeLab, argv: list[str], timeout: float = 150) -> dict[str, Any]:
    proc = lab.spawn_client(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = out.decode().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": "no output"}
    assert proc.returncode == 0 and result["error"] is None, (result, err.decode()[-2000:])
    return result


def _auth(lab: EdgeLab) -> list[str]:
    """The lab's API keys file: its clients mint client tokens as an application server would."""
    return ["--api-keys", str(lab_key_file(lab.tmpdir))]


def _p50(rtt: dict[str, list[float]], size: int) -> float:
    return round(statistics.median(rtt[str(size)]), 2)


def test_aiortc_client_messages_through_the_relay(lab: EdgeLab) -> None:
    before = _relay_totals(lab)
    result = _run(lab, [sys.executable, "-m", "lab.channelclient", *_auth(lab), lab.txrs[0].url])
    after = _relay_totals(lab)
    assert result["sent"] == result["echoed"] == MESSAGES and result["bad"] == 0
    audio = result["rtp_after"] - result["rtp_before"]
    assert result["rtp_before"] > 0 and audio > 0
    decap = after["fwd_decap"] - before["fwd_decap"]
    assert decap >= MIN_SCTP_PACKETS + audio  # the echoes (SCTP and RTP) came through XDP
    assert after["fwd_flow"] - before["fwd_flow"] >= MIN_SCTP_PACKETS
    assert drops(after) == drops(before)
    # One relay carried it, to the transceiver whose URL took the offer.
    assert [t for _, t in lab.carrier(tuple(result["local"]))] == [lab.txrs[0].id]
    rtt = result["rtt_ms"]
    report("datachannel aiortc", p50_100B=_p50(rtt, 100), p50_64KB=_p50(rtt, 65536), audio=audio)


def test_chromium_messages_through_the_relay(lab: EdgeLab) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    before = _relay_totals(lab)
    result = _run(lab, [sys.executable, "-m", "lab.browserchannel", *_auth(lab), lab.txrs[1].url])
    after = _relay_totals(lab)
    assert result["sent"] == result["echoed"] == MESSAGES and result["bad"] == []
    assert result["max_message_size"] == "262144"
    assert result["first_mline"] == "audio"  # OpenAI's order: microphone, then oai-events
    assert result["audio_before"] >= 10
    assert result["audio_after"] >= result["audio_before"] + 50
    assert after["fwd_decap"] - before["fwd_decap"] >= MIN_SCTP_PACKETS + 50
    assert drops(after) == drops(before)
    rtt = result["rtt_ms"]
    report("datachannel chromium", p50_100B=_p50(rtt, 100), p50_64KB=_p50(rtt, 65536))
