"""Every relayctl command has tidy --help, and ufrag mint/decode round-trip without a relay."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.control.ctl_lab import RELAYCTL

COMMANDS = [
    [], ["load"], ["unload"], ["map"], ["map", "sync"], ["map", "show"], ["flows"], ["stats"],
    ["ufrag"], ["ufrag", "mint"], ["ufrag", "decode"],
]  # fmt: skip
KEY = "00112233445566778899aabbccddeeff"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([RELAYCTL, *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in res.stdout + res.stderr
    return res


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "relayctl")
def test_help(cmd: list[str]) -> None:
    res = _run(*cmd, "--help")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith(f"Usage: relayctl {' '.join(cmd)}".rstrip())
    assert max(len(line) for line in res.stdout.splitlines()) <= 100
    if cmd not in ([], ["map"], ["ufrag"]):  # every command takes --name
        assert "--name" in res.stdout


def test_ufrag_mint_decode_round_trip() -> None:
    args = ["--key-id", "3", "--key", KEY]
    minted = _run("ufrag", "mint", *args, "--cluster", "513", "--transceiver", "4000000000")
    assert minted.returncode == 0
    text = minted.stdout.strip()
    assert len(text) == 24
    info = json.loads(_run("ufrag", "decode", text, *args, "--json").stdout)
    assert info["tag_ok"] is True and (info["key_id"], info["cluster"]) == (3, 513)
    assert info["transceiver"] == 4000000000 and len(info["nonce"]) == 8
    assert 0 <= info["epoch"] < 4096 and info["version"] == 2
    # The whole STUN USERNAME is accepted too; another key fails with status 1.
    res = _run("ufrag", "decode", f"{text}:abcd", "--key-id", "3", "--key", "ff" * 16)
    assert res.returncode == 1 and "tag_ok: False" in res.stdout and "bad_tag" in res.stdout
    again = _run("ufrag", "mint", *args, "--cluster", "513", "--transceiver", "4000000000")
    assert again.stdout.strip() != text  # fresh nonce every time
