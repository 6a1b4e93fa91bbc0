"""Lab fixtures: every lab is torn down after its tests, and the test fails if anything is left."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.topology import RelayLab, sweep_stale_labs
from tests.lab.labhelp import assert_clean


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_labs() -> None:
    """Labs of test runs that were SIGKILLed (pid gone) would otherwise pile up."""
    if os.geteuid() == 0:
        sweep_stale_labs()


@pytest.fixture
def bare_lab() -> Iterator[RelayLab]:
    """Namespaces and links for two transceivers, no relay loaded."""
    lab = RelayLab(transceivers=2, load_relay=False)
    with lab:
        yield lab
    assert_clean(lab.prefix)


@pytest.fixture(scope="module")
def relay_lab() -> Iterator[RelayLab]:
    """The XDP relay loaded by relayctl with two transceivers registered.

    Module scope: compiling the program takes seconds. Tests share it without seeing each other:
    each uses fresh client sockets (new flows) and asserts counter deltas.
    """
    lab = RelayLab(transceivers=2, load_relay=True)
    with lab:
        yield lab
    assert_clean(lab.prefix)
