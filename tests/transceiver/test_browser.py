"""The browser path: headless Chromium loads the demo page, calls, hears its own audio, hangs up.

Two servers answer the same page: `transceiver serve` (ICE-lite, one UDP socket, Opus echo) and the
stock aiortc baseline (bench/stock_aiortc.py), so a broken page and a broken server tell apart.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.calls import Running, stock_server, transceiver_server
from lab.browsercall import ARGS as CHROMIUM_ARGS  # one set of Chromium flags
from lab.browsercall import CHROMIUM, mint_token

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

VENV_BIN = Path(sys.executable).parent

ECHO_PACKETS = 50  # 1 s of 20 ms Opus packets: our own audio, echoed back


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric_values(base: str) -> dict[str, float]:
    """Every sample of /metrics, keyed `name` or `name{label=value,...}`."""
    status, text = get(f"{base}/metrics")
    assert status == 200, text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def ended_calls(values: dict[str, float]) -> float:
    return sum(v for k, v in values.items() if k.startswith("txr_calls_ended_total"))


@contextlib.contextmanager
def running_server(kind: str, capacity: int = 4) -> Iterator[str]:
    """The server as a subprocess on 127.0.0.1, on ports it picks itself (port 0, so parallel
    runs cannot collide); yields its base URL once it says it is ready; always terminated."""
    if kind == "transceiver" and not (VENV_BIN / "transceiver").exists():
        pytest.fail("`transceiver` is not installed in the venv: run `make install`")
    server = stock_server(capacity) if kind == "stock" else transceiver_server("echo", capacity)
    running = Running(server)
    with running as (_pid, base):
        status, body = get(f"{base}/healthz")
        assert status == 200, body
        API_KEYS[base] = running.api_key
        yield base


API_KEYS: dict[str, str | None] = {}  # base URL -> the server's API key (None: stock aiortc)


def goto(page: object, base: str) -> None:
    """Open the page the way an application serves it: a fresh client token for every call,
    minted with the server's API key (the key never reaches the browser)."""
    key = API_KEYS.get(base)
    if key:
        page.expose_function("getEdgeToken", lambda: mint_token(base, key))  # type: ignore[attr-defined]
    page.goto(f"{base}/")  # type: ignore[attr-defined]


@pytest.fixture(params=["transceiver", "stock"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    with running_server(request.param) as base:
        yield base


@pytest.fixture
def page() -> Iterator[object]:
    """A fresh headless Chromium (own user-data-dir) with one page; closed even on failure."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="edge-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_page_calls_hears_its_echo_and_hangs_up(server: str, page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    before = metric_values(server)

    goto(page, server)
    assert page.evaluate("window.callState") == "idle"
    page.click("#call")

    # Our own (fake-device) audio comes back: packets flow, and they are not silence.
    page.wait_for_function(
        f"window.packetsReceived > {ECHO_PACKETS} || window.callState === 'failed'",
        timeout=30_000,
    )
    state = page.evaluate(
        "({state: window.callState, error: window.callError, url: window.callUrl,"
        " packets: window.packetsReceived, energy: window.inboundAudioEnergy,"
        " setup: window.setupMs})"
    )
    assert state["state"] == "connected", state
    assert state["packets"] > ECHO_PACKETS
    assert state["energy"] > 0, "echoed audio is silent"
    assert state["url"].startswith(f"{server}/v1/calls/")
    assert 0 < state["setup"] < 10_000
    assert page.inner_text("#setup") == f"{state['setup']} ms"
    assert page.inner_text("#state") == "connected"
    during = metric_values(server)
    assert during["txr_calls_active"] == before["txr_calls_active"] + 1
    assert during["txr_calls_started_total"] == before["txr_calls_started_total"] + 1

    page.click("#hangup")
    page.wait_for_function("window.callState === 'ended' || window.callState === 'failed'")
    assert page.evaluate("window.callState") == "ended", page.evaluate("window.callError")
    after = metric_values(server)
    assert after["txr_calls_active"] == before["txr_calls_active"]
    assert ended_calls(after) == ended_calls(before) + 1
    assert after.get("txr_calls_ended_total{reason=deleted}", 0) == 1
    # The call is gone: a second DELETE of its URL is a 404.
    req = urllib.request.Request(state["url"], method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(req, timeout=2)
    assert gone.value.code == 404

    # The page starts over cleanly: a second call from the same page is a new call.
    page.click("#call")
    page.wait_for_function(
        "window.packetsReceived > 10 || window.callState === 'failed'", timeout=30_000
    )
    assert page.evaluate("window.callState") == "connected", page.evaluate("window.callError")
    assert page.evaluate("window.callUrl") != state["url"]
    page.click("#hangup")
    page.wait_for_function("window.callState === 'ended' || window.callState === 'failed'")
    final = metric_values(server)
    assert final["txr_calls_started_total"] == before["txr_calls_started_total"] + 2
    assert final.get("txr_calls_ended_total{reason=deleted}", 0) == 2
    assert final["txr_calls_active"] == before["txr_calls_active"]
    assert errors == []


@pytest.mark.parametrize("kind", ["transceiver", "stock"])
def test_page_shows_a_refused_call(kind: str, page: object) -> None:
    """A server with no room answers 503: the page says so and can call again later."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    with running_server(kind, capacity=0) as base:
        goto(page, base)
        page.click("#call")
        page.wait_for_function("window.callState === 'failed'", timeout=30_000)
        error = page.evaluate("window.callError")
        assert error.startswith("server answered 503"), error
        assert page.inner_text("#error") == error
        assert page.is_enabled("#call") and page.is_disabled("#hangup")
        assert page.evaluate("window.callUrl") is None
        values = metric_values(base)
    assert values["txr_calls_active"] == 0
    assert values["txr_calls_started_total"] == 0
