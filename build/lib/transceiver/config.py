"""Settings of one transceiver process (filled by the CLI, or directly by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transceiver.paths import Addr


def parse_addr(text: str, *, default_host: str | None = None) -> Addr:
    """HOST:PORT (IPv4) -> (host, port); a clear ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_host is None:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        host, port = default_host, text
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return (host or "0.0.0.0", number)


@dataclass
class Settings:
    http: Addr = ("127.0.0.1", 8080)
    udp: Addr = ("0.0.0.0", 5000)
    cluster: int = 1
    txr_id: int = 1
    vips: list[Addr] = field(default_factory=list)
    advertise: str | None = None  # direct mode: the address clients reach our UDP socket at
    tunnel: str | None = None  # "ip:port" relays send to; default: advertise/udp address
    redis_url: str | None = None
    redis_prefix: str = "edge"
    capacity: int = 100
    drain_timeout: float = 30.0
    key_id: int | None = None
    key: bytes | None = None
    relay_tunnel_port: int = 6080
    consent_timeout: float = 30.0
    setup_timeout: float = 30.0
    registry_ttl: int = 10
    registry_refresh: float = 3.0
    app: str = "echo"
    media_path: str = "fast"  # Opus apps: "fast" (transceiver/fastpath.py) or "aiortc"
