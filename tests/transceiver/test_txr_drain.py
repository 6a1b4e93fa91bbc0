"""`transceiver serve` as a process: SIGTERM drains (503, registry says draining), then exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import redis

from lab.peer import call, make_offer
from wire import registry as wreg

pytestmark = pytest.mark.timeout(90)

EXE = Path(sys.executable).parent / "transceiver"
READY = re.compile(rb"transceiver ready http=(\S+) udp=(\S+)")


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.output = b""

    async def wait(self, timeout: float) -> int:
        out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.output += out
        return self.proc.returncode


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            str(EXE),
            "serve",
            "--listen=127.0.0.1:0",
            "--udp=127.0.0.1:0",
            "--no-auth",  # credentials: test_signaling_*.py
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        seen = b""
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            seen += line
            if not line:
                pytest.fail(f"transceiver exited before ready:\n{seen.decode()}")
            if m := READY.search(line):
                return Proc(proc, m.group(1).decode())

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def post(http: aiohttp.ClientSession, url: str, sdp: str) -> tuple[int, str]:
    async with http.post(
        url + "/v1/calls", data=sdp, headers={"Content-Type": "application/sdp"}
    ) as resp:
        return resp.status, await resp.text()


async def test_sigterm_drains_then_exits_when_the_last_call_ends(
    serve, redis_url, tmp_path
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    name = wreg.txr_key("edge", 4, 9)
    key = tmp_path / "routing-key"
    key.write_text("ab" * 16)
    key.chmod(0o600)
    txr = await serve(
        "--cluster=4", "--id=9", f"--redis={redis_url}", "--drain-timeout=60",
        "--key-id=1", f"--key-file={key}",
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        client = await call(http, txr.url, want_frames=20)
        try:
            await client.wait_state("connected")
            assert r.hget(name, "draining") == "0"
            txr.proc.send_signal(signal.SIGTERM)
            for _ in range(200):  # the signal is handled asynchronously
                async with http.get(txr.url + "/healthz") as resp:
                    if (await resp.json())["status"] == "draining":
                        break
                await asyncio.sleep(0.02)
            late = await make_offer()
            try:
                status, body = await post(http, txr.url, late.pc.localDescription.sdp)
                assert (status, body) == (503, "draining: this transceiver takes no new calls\n")
            finally:
                await late.close()
            # The drain's own beat (after any beat in flight) tells the fleet.
            for _ in range(250):
                if r.hget(name, "draining") == "1":
                    break
                await asyncio.sleep(0.02)
            assert r.hget(name, "draining") == "1"
            # The running call goes on while draining ...
            client.got_frames.clear()
            client.want_frames = len(client.frames) + 20
            await asyncio.wait_for(client.got_frames.wait(), 10)
            assert txr.proc.returncode is None
            # ... and when it ends the process deregisters and exits by itself.
            async with http.delete(txr.url + (client.location or "")) as resp:
                assert resp.status == 204
            assert await txr.wait(15) == 0
        finally:
            await client.close()
    assert b"transceiver stopped" in txr.output
    assert not r.exists(name)
    r.close()


async def test_drain_timeout_ends_the_remaining_calls(serve) -> None:
    txr = await serve("--drain-timeout=1", "--advertise=127.0.0.1")
    async with aiohttp.ClientSession() as http:
        client = await call(http, txr.url)
        try:
            await client.wait_state("connected")
            txr.proc.send_signal(signal.SIGTERM)
            assert await txr.wait(15) == 0
            # The server closed DTLS: the client sees the call end.
            assert await client.wait_state("closed", "failed", timeout=10) in ("closed", "failed")
        finally:
            await client.close()
    assert b"ending 1 calls" in txr.output, txr.output.decode()[-2000:]
