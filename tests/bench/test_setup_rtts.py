"""bench.setup_rtts measures what it says: through a delay line of 20 ms RTT on the client's link
and the XDP relay lab, every phase a Chromium and an aiortc client time is at least the round
trips the protocol needs (lower bounds: facts of the protocol and of the delay line, not
timing targets), and the phases come in order."""

from __future__ import annotations

import pytest

from bench import setup_rtts

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.timeout(300)]


def test_phases_are_ordered_and_cost_their_round_trips() -> None:
    rtt, by_client = setup_rtts.measure(20.0, 1, ("aiortc", "chromium"))
    assert 20.0 <= rtt < 1000  # the delay line delays; a connect still works
    for client, ((doc,), server_ms) in by_client.items():
        # the server did the call's work (DTLS alone is over a ms of CPU) in far less than
        # the time it took over the delay line
        assert 0.5 < server_ms < doc["echo_ms"], (client, server_ms)
        answer, ice, dtls = doc["answer_ms"], doc["ice_ms"], doc["dtls_ms"]
        greeting, echo = doc["greeting_ms"], doc["echo_ms"]
        assert answer >= rtt and ice >= answer + rtt, client  # POST/201, then a check
        assert dtls >= ice, client
        assert dtls >= 4 * rtt * 0.99, client  # answer, check, and DTLS 1.2's two round trips
        assert greeting >= 3.5 * rtt and echo >= dtls + rtt * 0.99, client
