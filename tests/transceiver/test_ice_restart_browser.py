"""ICE restart from headless Chromium (the demo page's window.restartIce(): pc.restartIce(), the
new offer's credentials by PATCH, the answer with the new server credentials applied), against
an in-process transceiver: the same session, DTLS association and SRTP keys carry on under a new
routing ufrag, no new call is made, and the audio gap across the restart is measured where the
client's audio arrives (the server's Opus fast path)."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Callable

import aiohttp
import pytest
from playwright.async_api import Page, Route

from lab.browsercall import ARGS as CHROMIUM_ARGS
from lab.browsercall import CHROMIUM
from tests.transceiver.conftest import TEST_KEY, TEST_KEY_ID
from transceiver import aiortc_seam
from transceiver.ice import IceLiteAgent
from transceiver.service import TransceiverService
from wire import ufrag as wufrag

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def wait_for(pred: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def _ice_report(page: Page, agent: IceLiteAgent, txr: TransceiverService) -> str:
    """What both ends saw, for a failure message: our agent's counters and the mux's drops,
    Chromium's candidate pairs (state, nominated, requests and responses each way)."""
    pairs = await page.evaluate("window.candidatePairs()")
    return (
        f"agent checks={agent.checks} probes_sent={agent.probes_sent} verified={agent.verified}"
        f" selected={agent.selected} routes={[r.path for r in agent.routes]};"
        f" mux drops={dict(txr.mux.drops)}; Chromium's candidate pairs {pairs}"
    )


# The PATCH straight through, and held back as a real network's round trip would: Chromium's
# new sockets check before the answer arrives, under our old ufrag and its own new one.
@pytest.mark.parametrize("patch_delay_ms", [0, 300])
async def test_chromium_restarts_ice_and_the_same_call_goes_on(
    txr: TransceiverService, http: aiohttp.ClientSession, patch_delay_ms: int
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="edge-chromium-") as profile:
        async with async_playwright() as pw:
            ctx = await pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await ctx.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                if patch_delay_ms:

                    async def hold_patch(route: Route) -> None:
                        if route.request.method == "PATCH":
                            await asyncio.sleep(patch_delay_ms / 1000)
                        await route.continue_()

                    await page.route("**/v1/calls/**", hold_patch)
                await page.goto(f"{txr.http_url}/")
                await page.click("#call")
                await page.wait_for_function(
                    "window.packetsReceived > 25 || window.callState === 'failed'",
                    timeout=30_000,
                )
                assert await page.evaluate("window.callState") == "connected"
                (session,) = txr.manager.sessions.values()
                dtls = session.pc.getTransceivers()[0].receiver.transport
                before = (session, session.call, dtls, *aiortc_seam.srtp_sessions(dtls))
                old_ufrag = session.ufrag
                old_path = session.ice.selected
                started = txr.metrics.registry.get_sample_value("txr_calls_started_total")
                # Where the client's audio arrives: every SRTP packet of the call.
                assert session.fastpath is not None and session.ice.rtp_sink is not None
                arrivals: list[float] = []
                sink = session.ice.rtp_sink

                def tap(data: bytes) -> bool:
                    arrivals.append(time.monotonic())
                    return sink(data)

                session.ice.rtp_sink = tap
                await wait_for(lambda: len(arrivals) >= 10, "audio before the restart")

                restarted = await page.evaluate("window.restartIce()")
                at = time.monotonic()
                assert restarted["ufrag"] == session.ufrag != old_ufrag
                hint = wufrag.verify(session.ufrag, {TEST_KEY_ID: TEST_KEY})
                assert (hint.cluster, hint.transceiver) == (2, 7)
                assert txr.mux.agent_for(session.ufrag) is session.ice
                # Chromium checks under the new credentials and nominates (again).
                try:
                    await wait_for(lambda: session.ice.nominated, "a nomination after the restart")
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc}: {await _ice_report(page, session.ice, txr)}"
                    ) from None
                # The old ufrag lives on only while Chromium may still use it: a connection it
                # opened before the answer keeps our old ufrag (then until the next restart or
                # the end of the call); a nomination under the new one retires it. Never more.
                assert session.ice.ufrags in ([session.ufrag], [session.ufrag, old_ufrag])
                assert txr.mux.agent_for(old_ufrag) is (
                    session.ice if old_ufrag in session.ice.ufrags else None
                )
                assert txr.mux.registered() == [session.ice]
                await wait_for(
                    lambda: len([t for t in arrivals if t > at]) >= 50, "audio after the restart"
                )
                gaps = [b - a for a, b in itertools.pairwise(arrivals)]
                gap_ms = max(gaps) * 1000
                packets = await page.evaluate("window.inboundPackets()")
                state = await page.evaluate("window.callState")
                assert state == "connected", await page.evaluate("window.callError")
                assert packets > 50  # the echo came back through the restart too
                assert (session, session.call, dtls, *aiortc_seam.srtp_sessions(dtls)) == before
                assert txr.metrics.registry.get_sample_value("txr_calls_started_total") == started
                assert session.ice_restarts == 1 and session.end_reason is None
                assert session.fastpath.rx_errors == 0
                new_path = session.ice.selected
                print(
                    f"\nChromium ICE restart: restartIce()->answer applied {restarted['ms']} ms,"
                    f" max audio gap {gap_ms:.0f} ms, path {old_path} -> {new_path},"
                    f" server ufrags in use {len(session.ice.ufrags)}"
                )
                assert gap_ms < 1000
                # Chromium's new ICE session gathered new sockets: the call moved to a new
                # client port, and the mux bound it to the same call.
                assert new_path is not None and old_path is not None
                assert new_path.client != old_path.client
                assert new_path in txr.mux.paths_of(session.ice)
                await page.click("#hangup")
                await page.wait_for_function("window.callState === 'ended'", timeout=10_000)
                await wait_for(lambda: not txr.manager.sessions, "the call to end")
                assert txr.mux.registered() == []
                assert errors == []
            finally:
                await ctx.close()
