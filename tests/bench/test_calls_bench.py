"""The transceiver benchmark's parts: /proc readings, the stock baseline, callgen end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamError

from bench.calls import (
    Row,
    Running,
    build_table,
    client_procs,
    measure_setup,
    setup_table,
    stock_server,
    to_row,
    transceiver_server,
)
from lab import procstat
from lab.tone import TONE_OPUS, OpusToneTrack

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_cpu_and_rss_of_this_process() -> None:
    before = procstat.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn CPU so the counter must move
        pass
    assert procstat.cpu_seconds(os.getpid()) - before >= 0.2
    assert procstat.rss_kib(os.getpid()) > 10_000
    assert procstat.runqueue_wait_seconds(os.getpid()) >= 0


def test_udp_state_sees_unread_datagrams() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        base = procstat.udp_state(os.getpid()).queued
        for _ in range(3):
            tx.sendto(b"x" * 100, rx.getsockname())
        assert procstat.udp_state(os.getpid()).queued - base >= 300
        rx.recv(100)
        rx.recv(100)
        rx.recv(100)
        assert procstat.udp_state(os.getpid()).queued == base


def _request(url: str, method: str, body: bytes = b"", ctype: str = "") -> tuple[int, str]:
    req = urllib.request.Request(url, data=body or None, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_stock_server_refuses_bad_requests_clearly() -> None:
    with Running(stock_server()) as (_pid, url):
        assert _request(f"{url}/healthz", "GET") == (200, "ok\n")
        status, text = _request(f"{url}/v1/calls", "POST", b"v=0\r\n", "text/plain")
        assert (status, text) == (415, "Content-Type must be application/sdp\n")
        status, text = _request(f"{url}/v1/calls", "POST", b"not sdp", "application/sdp")
        assert status == 400 and text.startswith("bad offer:")
        status, _ = _request(f"{url}/v1/calls", "POST", b"\xff\xfe", "application/sdp")
        assert status == 400
        assert _request(f"{url}/v1/calls/nope", "DELETE")[0] == 404
        status, text = _request(f"{url}/metrics", "GET")
        assert "txr_calls_active 0" in text and "txr_calls_started_total 0" in text


@pytest.mark.parametrize(("which", "procs"), [("stock", 1), ("transceiver", 1), ("transceiver", 2)])
def test_callgen_measures_calls_and_the_server(which: str, procs: int) -> None:
    running = Running(stock_server() if which == "stock" else transceiver_server("echo", 10))
    with running as (pid, url):
        auth = ["--api-keys", str(running.keys_file)] if running.keys_file else []
        done = subprocess.run(
            [
                *(sys.executable, "-m", "bench.callgen", "--url", url, "--calls", "3", *auth),
                *("--duration", "2", "--server-pid", str(pid), "--per-call"),
                *("--procs", str(procs)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
        status, metrics = _request(f"{url}/metrics", "GET")
    assert result["connected"] == 3 and result["errors"] == []
    assert result["client_procs"] == procs
    assert result["client_cpu_pct_of_core"] > 0
    for call in result["per_call"]:
        # >= 2 s of 50 packets/s went out, and the echo came back.
        assert call["sent"] >= 100
        assert call["received"] >= 0.8 * call["sent"], call
        assert 0 < call["setup_ms"] < 10_000
    assert result["sent"] == sum(c["sent"] for c in result["per_call"])
    assert result["setup_ms_p50"] <= result["setup_ms_p99"]
    server_stats = result["server"]
    assert server_stats["pid"] == pid
    assert server_stats["cpu_s"] > 0 and server_stats["rss_before_kib"] > 10_000
    # The calls hung up: warm-up + 3 started, all ended, none active.
    assert status == 200
    assert "txr_calls_active 0" in metrics
    assert "txr_calls_started_total 4" in metrics
    row = to_row(which, result)
    assert row.connected == 3 and row.cpu_pct_per_call > 0


def _row(label: str, calls: int, cpu: float, loss: float = 0.0) -> Row:
    return Row(label, calls, calls, cpu, 300.0, loss, 30.0, 60.0, 10.0, "-", 1.0, 0.5)


def test_table_counts_calls_per_core_only_where_the_server_kept_up() -> None:
    rows = [
        _row("stock aiortc", 5, 16.0),
        _row("stock aiortc", 10, 8.0, loss=50.0),  # saturated: not the reference
        _row("transceiver", 10, 2.0),
        _row("transceiver", 50, 1.0, loss=30.0),
    ]
    table = build_table(rows, 10.0)
    cells = [[str(c) for c in r] for r in table.rows]
    per_core, ratio = table.headers.index("calls/core"), table.headers.index("vs stock")
    assert [c[per_core] for c in cells] == ["6", "did not keep up", "50", "did not keep up"]
    # CPU per call against stock's fewest-calls run (16 %), only where the row kept up.
    assert [c[ratio] for c in cells] == ["-", "-", "x8.0", "-"]
    assert "transceiver" in table.render_markdown()


def test_client_procs_scale_with_calls_and_cpus() -> None:
    assert [client_procs(n, cpus=2) for n in (1, 100)] == [1, 1]
    assert [client_procs(n, cpus=16) for n in (10, 26, 100, 1000)] == [1, 2, 4, 4]


def test_sequential_set_up_times() -> None:
    result = measure_setup(transceiver_server("echo", 4), 3)
    assert result["connected"] == 3 and result["errors"] == []
    assert 0 < result["setup_ms_min"] <= result["setup_ms_p50"] <= result["setup_ms_p99"] < 10_000
    table = setup_table([("transceiver", result)])
    assert table.rows[0][:3] == ["transceiver", 3, 3]


async def test_tone_track_is_paced_opus() -> None:
    track = OpusToneTrack()
    t0 = time.monotonic()
    packets = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - t0
    # 10 intervals of 20 ms after the first packet: real time, not as fast as possible.
    assert 0.19 <= elapsed < 1.0
    assert [p.pts for p in packets] == [960 * n for n in range(11)]
    assert all(bytes(p) == TONE_OPUS[n % 50] for n, p in enumerate(packets))
    assert len(TONE_OPUS) == 50 and all(40 < len(p) < 1500 for p in TONE_OPUS)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
