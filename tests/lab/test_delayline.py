"""lab.delayline, the lab's netem: a link through it delays every frame both ways by at least
the delay, keeps the MACs and payloads as they were, and loses exactly the frames its seeded
coin says; the process and its namespace are gone after the lab."""

from __future__ import annotations

import random
import time

import pytest

from lab import netns
from lab.base import Lab
from lab.delayline import Impairment, delayed_link

pytestmark = pytest.mark.lab

A, B = "198.18.9.1", "198.18.9.2"
PORT = 7000
SEED = 1234


class WireLab(Lab):
    def __init__(self, imp: Impairment) -> None:
        super().__init__()
        self.imp = imp

    def build(self) -> None:
        self.a, self.b = self.namespace("a"), self.namespace("b")
        delayed_link(self, self.a, "ea", self.b, "eb", self.imp, "wire")
        netns.add_addr(self.a, "ea", f"{A}/24")
        netns.add_addr(self.b, "eb", f"{B}/24")
        netns.add_neigh(self.a, "ea", B, netns.mac(self.b, "eb"))
        netns.add_neigh(self.b, "eb", A, netns.mac(self.a, "ea"))


def probe(lab: WireLab, count: int) -> tuple[list[float], list[int]]:
    """`count` sequential UDP echoes A -> B -> A (one in flight): their RTTs in ms and the
    numbers of those lost (no echo within four delays and 200 ms)."""
    server = netns.socket_in(lab.b)
    server.bind((B, PORT))
    server.settimeout(0.05)
    client = netns.socket_in(lab.a)
    client.settimeout(0.2 + 4 * lab.imp.delay_ms / 1000)
    rtts, lost = [], []
    try:
        for i in range(count):
            payload = i.to_bytes(4, "big") + bytes(100)
            t0 = time.monotonic()
            client.sendto(payload, (B, PORT))
            try:
                data, peer = server.recvfrom(2048)
                server.sendto(data, peer)
            except TimeoutError:
                pass  # the request was lost: nothing to echo
            try:
                data, _ = client.recvfrom(2048)
            except TimeoutError:
                lost.append(i)
                continue
            assert data == payload  # bytes across unchanged
            rtts.append((time.monotonic() - t0) * 1000)
    finally:
        server.close()
        client.close()
    return rtts, lost


def test_every_frame_is_delayed_both_ways() -> None:
    with WireLab(Impairment(delay_ms=15.0)) as lab:
        rtts, lost = probe(lab, 20)
        wire = lab.prefix + "-wire"
        assert netns.exists(wire)
    assert not lost
    assert min(rtts) >= 30.0  # at least the delay each way (an upper bound would be timing)
    assert not netns.exists(wire)


def test_loss_follows_the_seeded_coin() -> None:
    """Sequential echoes: the delay line draws once per request and once per echo it carries,
    in that order, so the probes it loses are known in advance for a seed."""
    imp = Impairment(delay_ms=1.0, loss=0.3, seed=SEED)
    rng = random.Random(SEED)
    expect = []
    for i in range(60):
        if rng.random() < imp.loss or rng.random() < imp.loss:  # the request, then the echo
            expect.append(i)
    with WireLab(imp) as lab:
        _, lost = probe(lab, 60)
    assert lost == expect and 0 < len(lost) < 60


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="probability"):
        Impairment(delay_ms=1.0, loss=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        Impairment(delay_ms=-1.0)
