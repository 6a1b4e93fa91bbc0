"""`ADDR:PORT` strings, as used for VIPs and tunnel endpoints: IPv4 (the tunnel, the backbone),
and for VIPs also `[IPV6]:PORT` (`ipv6=True`; docs/wire-format.md §3)."""

from __future__ import annotations

import ipaddress

ANY_HOST = "0.0.0.0"


def parse_addr_port(
    text: str, *, what: str = "address", bind: bool = False, ipv6: bool = False
) -> tuple[str, int]:
    """Split "198.18.0.1:3478" into ("198.18.0.1", 3478); ValueError with a clear message.

    `bind=True` is for an address this process listens on: the host may be left out
    (":5000" means 0.0.0.0:5000) and port 0 asks the kernel for a free port. `ipv6=True` also
    takes "[2001:db8::1]:3478" (the address comes back compressed, without brackets).
    """
    host, sep, port_text = text.strip().rpartition(":")
    example = "0.0.0.0:5000 or :5000" if bind else "198.18.0.1:3478"
    if ipv6:
        example += " or [2001:db8::1]:3478"
    if ipv6 and text.strip().startswith("[") and not host.endswith("]"):
        sep = ""  # "[2001:db8::1]" or "[2001:db8::1:3478": no "]:PORT"
    if not sep or (not host and not bind):
        want = "IPV4:PORT or [IPV6]:PORT" if ipv6 else "IPV4:PORT"
        raise ValueError(f"{what} {text!r}: expected {want}, e.g. {example}")
    if ipv6 and host.startswith("[") and host.endswith("]"):
        try:
            v6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
        if v6.scope_id:
            raise ValueError(f"{what} {text!r}: a scoped (%zone) address is not a VIP") from None
        addr = str(v6)
    else:
        try:
            addr = str(ipaddress.IPv4Address(host or ANY_HOST))
        except ValueError:
            hint = " (IPv6: [ADDR]:PORT)" if ipv6 and ":" in host else ""
            raise ValueError(f"{what} {text!r}: {host!r} is not an IPv4 address{hint}") from None
    lowest = 0 if bind else 1
    # isascii: str.isdigit() also accepts digits like '²' that int() refuses
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r}: port {port_text!r} is not {lowest}..65535") from None
    return addr, int(port_text)


def format_addr_port(addr: str, port: int) -> str:
    """The text parse_addr_port reads back: "198.18.0.1:3478" or "[2001:db8::1]:3478"."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def is_ipv6(addr: str) -> bool:
    return ":" in addr


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
