"""Every relayctl command has tidy --help, and ufrag mint/decode round-trip without a relay."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.control.ctl_lab import RELAYCTL

COMMANDS = [
    [], ["load"], ["unload"], ["map"], ["map", "sync"], ["map", "show"], ["flows"], ["stats"],
    ["ufrag"], ["ufrag", "mint"], ["ufrag", "decode"],
    ["keys"], ["keys", "add"], ["keys", "list"], ["keys", "promote"], ["keys", "retire"],
]  # fmt: skip
KEY = "00112233445566778899aabbccddeeff"
GROUPS = ([], ["map"], ["ufrag"], ["keys"])


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
    if cmd not in GROUPS and cmd[0] != "keys":  # every relay command takes --name
        assert "--name" in res.stdout
    # No secret is ever taken on the command line: keys and passwords come from files or env.
    assert "--key " not in res.stdout and "HEX" not in res.stdout


def _key_file(tmp_path: Path, hex_key: str, name: str = "key") -> str:
    path = tmp_path / name
    path.write_text(hex_key + "\n")
    path.chmod(0o600)
    return str(path)


def test_ufrag_mint_decode_round_trip(tmp_path: Path) -> None:
    args = ["--key-id", "3", "--key-file", _key_file(tmp_path, KEY)]
    minted = _run("ufrag", "mint", *args, "--cluster", "513", "--transceiver", "4000000000")
    assert minted.returncode == 0
    text = minted.stdout.strip()
    assert len(text) == 24
    info = json.loads(_run("ufrag", "decode", text, *args, "--json").stdout)
    assert info["tag_ok"] is True and (info["key_id"], info["cluster"]) == (3, 513)
    assert info["transceiver"] == 4000000000 and len(info["nonce"]) == 8
    assert 0 <= info["epoch"] < 4096 and info["version"] == 2
    # The whole STUN USERNAME is accepted too; another key fails with status 1.
    other = _key_file(tmp_path, "ff" * 16, "other")
    res = _run("ufrag", "decode", f"{text}:abcd", "--key-id", "3", "--key-file", other)
    assert res.returncode == 1 and "tag_ok: False" in res.stdout and "bad_tag" in res.stdout
    again = _run("ufrag", "mint", *args, "--cluster", "513", "--transceiver", "4000000000")
    assert again.stdout.strip() != text  # fresh nonce every time


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "No such file or directory"),
        ("", "empty"),
        ("not hex at all", "not hex"),
        ("0011", "2 bytes, a key is 16 bytes"),
    ],
)
def test_key_file_errors(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    res = _run("ufrag", "mint", "--key-id", "1", "--key-file", str(path), "--cluster", "1",
               "--transceiver", "1")  # fmt: skip
    assert res.returncode == 1 and says in res.stderr and res.stdout == ""


def test_key_file_from_env_and_loose_mode_warns(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o644)
    env = {**os.environ, "RELAYCTL_KEY_FILE": str(path)}
    res = subprocess.run(
        [RELAYCTL, "ufrag", "mint", "--key-id", "1", "--cluster", "1", "--transceiver", "1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert res.returncode == 0 and len(res.stdout.strip()) == 24
    assert "readable by group or others (mode 644)" in res.stderr
    path.chmod(0o600)
    res = subprocess.run(
        [RELAYCTL, "ufrag", "mint", "--key-id", "1", "--cluster", "1", "--transceiver", "1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert res.returncode == 0 and res.stderr == ""
    res = _run("ufrag", "mint", "--key-id", "1", "--cluster", "1", "--transceiver", "1")
    assert res.returncode == 2 and "--key-file" in res.stderr
