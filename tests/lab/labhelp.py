"""Helpers for the lab tests: wait on sockets with timeouts, never on the clock."""

from __future__ import annotations

import socket

from lab import netns


def recv_exact(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, tuple[str, int]]:
    """One datagram, or a test failure naming the socket after `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        data, src = sock.recvfrom(65535)
    except TimeoutError:
        raise AssertionError(
            f"nothing arrived on {sock.getsockname()} within {timeout} s"
        ) from None
    return data, src


def assert_clean(prefix: str) -> None:
    """Nothing of a lab may survive it: namespaces, pinned maps (and so XDP links)."""
    assert prefix
    assert netns.list_namespaces(prefix) == []
    assert not [p for p in netns.BPFFS.iterdir() if p.name.startswith(prefix)]
