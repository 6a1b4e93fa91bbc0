"""The one error type relayctl shows to users: a message that says what to do, no traceback."""

from __future__ import annotations


class RelayctlError(Exception):
    """An expected failure (bad input, no such interface, nothing loaded): str() is the message."""
