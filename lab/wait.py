"""Waiting on a condition with a deadline: tests and labs poll state, they never sleep as an
assertion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError, so pytest reports it as a failure)."""


def wait_until(pred: Callable[[], T], timeout: float, what: str, step: float = 0.02) -> T:
    """Poll `pred` until it returns something truthy and return that; raise WaitTimeout naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
