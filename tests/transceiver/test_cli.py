"""`transceiver serve`'s options: defaults from the one table, addresses parsed by wire.addr."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from transceiver import defaults
from transceiver.cli import main, serve
from transceiver.config import Settings
from wire import defaults as fleet
from wire.addr import parse_addr_port

# CLI option name -> Settings field, where they differ.
FIELD_OF = {"listen": "http", "vip": "vips"}


def test_cli_and_settings_take_their_defaults_from_one_table() -> None:
    settings = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)}
    checked = 0
    for param in serve.params:
        name = FIELD_OF.get(param.name, param.name)
        if name not in fields or not isinstance(param.default, str | int | float):
            continue  # no default (None; click's UNSET sentinel) or a list
        default = param.default
        if name in ("http", "udp"):
            default = parse_addr_port(default, bind=True)
        assert default == getattr(settings, name), param.name
        checked += 1
    assert checked >= 12
    assert settings.relay_tunnel_port == fleet.RELAY_TUNNEL_PORT == defaults.RELAY_TUNNEL_PORT
    assert (settings.registry_ttl, settings.registry_refresh) == (
        fleet.REGISTRY_TTL,
        fleet.REGISTRY_REFRESH,
    )
    assert settings.redis_prefix == fleet.REDIS_PREFIX == "edge"


def test_fleet_defaults_are_the_documented_ones() -> None:
    assert (fleet.RELAY_TUNNEL_PORT, fleet.REGISTRY_TTL, fleet.REGISTRY_REFRESH) == (
        6080,
        10.0,
        3.0,
    )
    assert (fleet.REDIS_PREFIX, fleet.IP_TTL) == ("edge", 64)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (":5000", ("0.0.0.0", 5000)),
        ("0.0.0.0:5000", ("0.0.0.0", 5000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (" 10.0.0.7:5000 ", ("10.0.0.7", 5000)),
    ],
)
def test_listening_addresses(text: str, parsed: tuple[str, int]) -> None:
    assert parse_addr_port(text, bind=True) == parsed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--udp", "5000"], "expected IPV4:PORT"),
        (["--udp", "localhost:5000"], "is not an IPv4 address"),
        (["--listen", "127.0.0.1:65536"], "is not 0..65535"),
        (["--listen", "127.0.0.1:²"], "is not 0..65535"),
        (["--vip", ":3478"], "expected IPV4:PORT"),
        (["--vip", "203.0.113.10:0"], "is not 1..65535"),
        (["--tunnel", "10.0.0.5"], "expected IPV4:PORT"),
        (["--advertise", "example.com"], "is not an IPv4 address"),
        (["--key", "00" * 16], "No such option '--key'"),
        (["--key-file", "/nonexistent/key"], "No such file or directory"),
        (["--trusted-proxy", "10.0.0.0/33"], "not an address or CIDR: '10.0.0.0/33'"),
        (["--trusted-proxy", "front.example"], "not an address or CIDR"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_trusted_proxies_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from transceiver import cli

    got: list[Settings] = []

    async def fake_serve(settings: Settings, gc_freeze: bool) -> None:
        got.append(settings)

    monkeypatch.setattr(cli, "_serve", fake_serve)
    argv = ["serve", "--no-auth", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert got[0].trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    assert Settings().trusted_proxies == []  # default: nobody's X-Forwarded-For is read
    result = CliRunner().invoke(main, ["front", "--redis", "redis://x", "--trusted-proxy", "x"])
    assert result.exit_code == 2 and "not an address or CIDR" in result.output


def test_help_shows_the_defaults() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "[default: 0.0.0.0:5000]" in result.output
    assert f"[default: {fleet.RELAY_TUNNEL_PORT};" in result.output


def test_key_file_needs_a_key_id_and_warns_when_others_can_read_it(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("00" * 16 + "\n")
    key.chmod(0o640)
    result = CliRunner().invoke(main, ["serve", "--key-file", str(key)])
    assert result.exit_code == 2, result.output
    assert "--key-file needs --key-id" in result.output
    assert "readable by group or others (mode 640)" in result.output
    bad = tmp_path / "bad"
    bad.write_text("zz" * 16)
    result = CliRunner().invoke(main, ["serve", "--key-id", "1", "--key-file", str(bad)])
    assert result.exit_code == 2 and "not hex" in result.output
