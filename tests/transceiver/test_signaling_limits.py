"""Signaling under a flood (issue 8 item 5): bounded connections, header and body timeouts,
a POST budget per client, logs that no input can flood."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lab.peer import auth_header
from transceiver.auth import write_key_file
from transceiver.limits import (
    FD_RESERVE,
    ConnectionGuard,
    RateLimiter,
    RepeatFilter,
    connection_limit,
)

pytestmark = pytest.mark.timeout(120)

EXE = Path(sys.executable).parent / "transceiver"
READY = re.compile(r"transceiver ready http=(\S+)")
HALF_SENT = 1500
SYSTEMD_NOFILE = 1024  # what systemd gives a service: the limit the flood exhausted


def _systemd_limits() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_NOFILE, SYSTEMD_NOFILE))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """`transceiver serve` as a process with 1,024 descriptors; (url, its log, an API key)."""
    keys = tmp_path / "api-keys"
    key = write_key_file(keys)
    log = tmp_path / "txr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                str(EXE),
                "serve",
                "--listen=127.0.0.1:0",
                "--udp=127.0.0.1:0",
                f"--api-keys={keys}",
                "--header-timeout=5",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=_systemd_limits,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        m = READY.search(line)
        assert m, f"not ready: {line!r}\n{log.read_text()[-2000:]}"
        yield m.group(1), log, key
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def _half_sent(host: str, port: int, n: int) -> list[socket.socket]:
    """n connections that each send most of a request head, and never the rest."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, port))
            s.send(b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


async def _get(url: str, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(url) as resp:
            await resp.read()
            return resp.status, time.monotonic() - t0


async def test_healthz_answers_within_a_second_under_1500_half_sent_requests(served) -> None:
    url, log, key = served
    host, port = url.removeprefix("http://").split(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HALF_SENT + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    socks = await asyncio.to_thread(_half_sent, host, int(port), HALF_SENT)
    try:
        assert len(socks) >= HALF_SENT - 10  # the flood got in (accepted, then evicted)
        for path in ("/healthz", "/readyz", "/healthz"):
            status, took = await _get(url + path, timeout=1.0)
            assert status == 200 and took < 1.0, (path, took)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            async with http.post(url + "/v1/tokens", headers=auth_header(key)) as resp:
                assert resp.status == 201  # POST still served
            async with http.get(url + "/metrics") as resp:
                metrics = await resp.text()
        evicted = re.search(r'txr_http_refused_total\{reason="connection_evicted"\} (\S+)', metrics)
        assert evicted and float(evicted.group(1)) > 0
        # 1,024 fds: at most 640 connections, so the process never ran out of descriptors,
        # and nothing was logged per connection.
        assert log.stat().st_size < 16_384, log.read_text()[-2000:]
        assert "Traceback" not in log.read_text()
    finally:
        for s in socks:
            s.close()


async def test_a_slow_request_head_is_closed_after_the_header_timeout(start_txr) -> None:
    txr = await start_txr(header_timeout=0.5)
    reader, writer = await asyncio.open_connection(*txr.http_addr)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
    t0 = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert 0.4 < time.monotonic() - t0 < 3
    writer.close()


async def test_a_slow_post_body_gets_408(start_txr) -> None:
    txr = await start_txr(body_timeout=0.5, header_timeout=5)
    reader, writer = await asyncio.open_connection(*txr.http_addr)
    writer.write(b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                 b"Content-Length: 1000\r\n\r\nv=0\r\n")  # fmt: skip
    head = await asyncio.wait_for(reader.readline(), 5)
    assert head.startswith(b"HTTP/1.1 408"), head
    writer.close()


async def test_posts_beyond_a_clients_budget_get_429(start_txr, http) -> None:
    txr = await start_txr(post_rate=0.5, post_burst=3)
    statuses = []
    for _ in range(5):
        async with http.post(txr.http_url + "/v1/calls", data="x") as resp:
            statuses.append(resp.status)
            retry = resp.headers.get("Retry-After")
    assert statuses == [415, 415, 415, 429, 429]
    assert retry is not None and 1 <= int(retry) <= 2
    async with http.get(txr.http_url + "/healthz") as resp:
        assert resp.status == 200  # GETs are not budgeted


def test_rate_limiter_refills_and_stays_bounded() -> None:
    rl = RateLimiter(rate=2.0, burst=2, max_clients=100)
    assert [rl.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert rl.take("b", now=0.0) == 0.0  # per client
    assert rl.take("a", now=1.0) == 0.0
    for i in range(1000):
        rl.take(f"c{i}", now=2.0)
    assert len(rl._buckets) == 100


def test_connection_limit_stays_below_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(None) <= soft - FD_RESERVE
    assert connection_limit(10) == 10
    assert connection_limit(10**9) == min(10**9, soft - FD_RESERVE)
    assert ConnectionGuard(5).limit == 5


def test_repeated_log_lines_collapse_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.flood")
    now = [0.0]
    filt = RepeatFilter(window=10.0, burst=3, clock=lambda: now[0])
    logger.addFilter(filt)
    try:
        with caplog.at_level(logging.INFO, "test.flood"):
            for i in range(10_000):
                logger.warning("accept failed: %s", i)
            logger.warning("another message")
            now[0] = 9.9
            logger.warning("accept failed: %s", "still")  # the same window: suppressed
            now[0] = 10.0  # the window passed: the next one says what was dropped
            logger.warning("accept failed: %s", "again")
        lines = [r.getMessage() for r in caplog.records]
    finally:
        logger.removeFilter(filt)
    assert lines[:4] == ["accept failed: 0", "accept failed: 1", "accept failed: 2",
                         "another message"]  # fmt: skip
    assert lines[4] == "accept failed: again (9998 more suppressed)"
