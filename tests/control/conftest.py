"""Fixtures for the relayctl tests (the lab is tests/control/ctl_lab.py); teardown always
cleans up."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.control.ctl_lab import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Lab() as lab:
        yield lab


@pytest.fixture
def loaded(lab: Lab) -> Lab:
    """The lab with the relay loaded natively on va, VIP 198.18.0.1:3478, tunnel :6080."""
    lab.load("--mode", "native")
    return lab
