"""`ADDR:PORT` strings, as used for VIPs and tunnel endpoints (IPv4 only, like the relay)."""

from __future__ import annotations

import ipaddress


def parse_addr_port(text: str, *, what: str = "address") -> tuple[str, int]:
    """Split "198.18.0.1:3478" into ("198.18.0.1", 3478); ValueError with a clear message."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} {text!r}: expected IPV4:PORT, e.g. 198.18.0.1:3478")
    try:
        addr = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValueError(f"{what} {text!r}: {host!r} is not an IPv4 address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r}: port {port_text!r} is not 1..65535") from None
    return addr, int(port_text)
