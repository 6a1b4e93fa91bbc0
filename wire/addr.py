"""`ADDR:PORT` strings, as used for VIPs and tunnel endpoints (IPv4 only, like the relay)."""

from __future__ import annotations

import ipaddress

ANY_HOST = "0.0.0.0"


def parse_addr_port(text: str, *, what: str = "address", bind: bool = False) -> tuple[str, int]:
    """Split "198.18.0.1:3478" into ("198.18.0.1", 3478); ValueError with a clear message.

    `bind=True` is for an address this process listens on: the host may be left out
    (":5000" means 0.0.0.0:5000) and port 0 asks the kernel for a free port.
    """
    host, sep, port_text = text.strip().rpartition(":")
    example = "0.0.0.0:5000 or :5000" if bind else "198.18.0.1:3478"
    if not sep or (not host and not bind):
        raise ValueError(f"{what} {text!r}: expected IPV4:PORT, e.g. {example}")
    try:
        addr = str(ipaddress.IPv4Address(host or ANY_HOST))
    except ValueError:
        raise ValueError(f"{what} {text!r}: {host!r} is not an IPv4 address") from None
    lowest = 0 if bind else 1
    # isascii: str.isdigit() also accepts digits like '²' that int() refuses
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r}: port {port_text!r} is not {lowest}..65535") from None
    return addr, int(port_text)


def addr_arg(text: str) -> tuple[str, int]:
    """parse_addr_port as an argparse `type=` (the lab's and bench's small command lines)."""
    import argparse

    try:
        return parse_addr_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bind_arg(text: str) -> tuple[str, int]:
    """The same for an address to listen on (host optional, port 0 allowed)."""
    import argparse

    try:
        return parse_addr_port(text, bind=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
