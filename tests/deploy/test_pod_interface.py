"""What the transceiver's pod spec relies on, on a plain `transceiver serve` (no podman):
`--id=$(POD_IP)` (an IPv4 address is its 32-bit value), the VIPs from TXR_VIPS (one ConfigMap
key for relays and transceivers), and /readyz (readiness: 503 while full or draining, while
/healthz, the liveness probe, stays 200)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from lab.tone import ToneTrack
from wire import ufrag

pytestmark = pytest.mark.timeout(60)

EXE = Path(sys.executable).parent / "transceiver"
READY = re.compile(rb"transceiver ready http=(\S+) udp=")
POD_IP = "10.1.2.3"
VIPS = "203.0.113.10:3478 203.0.113.11:443"


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    key = tmp_path / "routing-key"
    key.write_text(secrets.token_hex(16))
    key.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "serve", "--listen=127.0.0.1:0", "--udp=127.0.0.1:0", f"--id={POD_IP}",
        "--cluster=3", "--key-id=2", f"--key-file={key}", "--capacity=1", "--drain-timeout=30",
        "--no-auth",  # credentials: tests/transceiver/test_signaling_*.py
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "TXR_VIPS": VIPS, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    while not (m := READY.search(seen)):
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            pytest.fail(f"transceiver exited before ready:\n{seen.decode()}")
        seen += line
    try:
        yield proc, m.group(1).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _offer() -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTrack(ToneTrack())
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(url) as r:
        return r.status, dict(json.loads(await r.text()))


async def test_pod_ip_id_vips_from_env_and_readiness(serve) -> None:
    proc, url = serve
    async with aiohttp.ClientSession() as http:
        assert await _get(http, url + "/readyz") == (
            200,
            {"status": "ok", "active": 0, "capacity": 1},
        )
        async with http.post(
            url + "/v1/calls", data=await _offer(), headers={"Content-Type": "application/sdp"}
        ) as r:
            assert r.status == 201
            answer = await r.text()
        # The VIPs of TXR_VIPS are the answer's only candidates ...
        cands = re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", answer)
        assert sorted(f"{a}:{p}" for a, p in cands) == sorted(VIPS.split())
        # ... and the routing ufrag names the pod IP as the transceiver id.
        server_ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)
        assert server_ufrag is not None
        hint = ufrag.decode(server_ufrag.group(1))
        assert (hint.cluster, hint.transceiver) == (3, int(ipaddress.IPv4Address(POD_IP)))
        # One call in progress at --capacity=1: not ready for more, still alive.
        assert (await _get(http, url + "/readyz"))[0] == 503
        assert (await _get(http, url + "/readyz"))[1]["status"] == "full"
        assert (await _get(http, url + "/healthz"))[0] == 200
        proc.send_signal(signal.SIGTERM)  # the kubelet, after preStop

        async def draining() -> tuple[int, dict[str, object]]:
            while True:
                status, body = await _get(http, url + "/readyz")
                if body["status"] == "draining":
                    return status, body
                await asyncio.sleep(0.05)

        status, body = await asyncio.wait_for(draining(), 10)
        assert (status, body["active"]) == (503, 1)
        assert (await _get(http, url + "/healthz")) == (
            200,
            {"status": "draining", "active": 1, "capacity": 1},
        )
    proc.send_signal(signal.SIGTERM)  # a second signal skips the rest of the drain
    assert await asyncio.wait_for(proc.wait(), 20) == 0


@pytest.mark.parametrize("bad", ["10.1.2", "300.1.2.3", "-1", "4294967296", "pod"])
async def test_a_bad_id_is_a_usage_error(bad: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "serve", f"--id={bad}", "--listen=127.0.0.1:0", "--udp=127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2, (out, err)
    assert b"Invalid value for '--id'" in err
