"""Fixtures for the end-to-end tests: a fresh EdgeLab (two XDP relays behind one VIP, two
`transceiver serve`, a private redis-server, `relayctl run` on each relay) per test, and aiortc
calls placed from its client namespace. Everything is torn down, also on failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lab import netns
from lab.calldriver import CallDriver
from lab.edge import EdgeLab


@pytest.fixture
def lab() -> Iterator[EdgeLab]:
    with EdgeLab() as lab:
        yield lab
    assert not netns.list_namespaces(lab.prefix), "lab namespaces left behind"
    assert not [p for p in netns.BPFFS.iterdir() if p.name.startswith(lab.prefix)], "pins left"
    assert not lab.tmpdir.exists()


@pytest.fixture
def place(lab: EdgeLab) -> Iterator[Callable[..., CallDriver]]:
    """place(url, ...) -> a CallDriver whose calls are connected; killed at teardown."""
    drivers: list[CallDriver] = []

    def start(*urls: str) -> CallDriver:
        d = CallDriver(lab, list(urls))
        drivers.append(d)
        for _ in urls:
            d.wait_call()
        return d

    yield start
    for d in drivers:
        d.close()
