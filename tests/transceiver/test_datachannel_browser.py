"""Headless Chromium opens `oai-events` on `transceiver serve` (direct mode): JSON text and
binary messages of 0 B .. 64 KB come back identical while the audio echo flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.calls import Running, transceiver_server
from lab.browsercall import CHROMIUM
from lab.channelclient import SIZES

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("app", ["echo", "pcm-echo"])
def test_chromium_oai_events_echo(app: str) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    server = Running(transceiver_server(app, 4))
    with server as (_pid, url):
        done = subprocess.run(
            [sys.executable, "-m", "lab.browserchannel", "--api-keys", str(server.keys_file), url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and result["error"] is None, (result, done.stderr[-2000:])
    assert result["sent"] == result["echoed"] == 2 + 2 * len(SIZES) and result["bad"] == []
    assert {"65536", "0", "1"} <= set(result["rtt_ms"])
    assert result["max_message_size"] == "262144"
    assert result["first_mline"] == "audio"  # OpenAI's order: microphone, then oai-events
    # Audio was flowing before the messages and kept flowing after them.
    assert result["audio_before"] >= 10 and result["audio_after"] >= result["audio_before"] + 50
