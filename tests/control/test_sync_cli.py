"""`relayctl map sync` from a file and from a real Redis, checked in the pinned maps."""

from __future__ import annotations

import ctypes as ct
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from control.sync import key_fingerprint
from datapath.maps import SPECS, PinnedMap
from tests.control.ctl_lab import BPFFS, RELAYCTL, Lab
from wire import registry
from wire.registry import TransceiverRecord

pytestmark = pytest.mark.lab

K1 = bytes.fromhex("00112233445566778899aabbccddeeff")
K2 = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
K2B = bytes.fromhex("aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb")
K3 = bytes.fromhex("5ec2e7a1d04b3f96a8173c0d2e4f6b81")
A, B, C = "198.18.2.2:5000", "198.18.2.3:5001", "198.18.2.4:5002"


def _write(path: Path, keys: dict[int, bytes], txrs: list[tuple[int, int, str]]) -> str:
    path.write_text(
        json.dumps(
            {
                "keys": {str(k): v.hex() for k, v in keys.items()},
                "current_key": max(keys),
                "transceivers": [{"cluster": c, "id": i, "tunnel": t} for c, i, t in txrs],
            }
        )
    )
    return str(path)


def _raw_keys(lab: Lab) -> dict[int, tuple[int, int, int]]:
    with PinnedMap(BPFFS / lab.name / "keys", SPECS["keys"]) as keys:
        out = {}
        for kid in range(16):
            k = keys.lookup(ct.c_uint32(kid))
            if k.live or k.k0 or k.k1:
                out[kid] = (k.k0, k.k1, k.live)
        return out


def test_sync_file_adds_changes_removes(loaded: Lab, tmp_path: Path) -> None:
    lab = loaded
    f1 = _write(tmp_path / "r1.json", {1: K1, 2: K2}, [(1, 7, A), (1, 8, A), (2, 1, B)])
    out = lab.relayctl("map", "sync", "--name", lab.name, "--file", f1).stdout.splitlines()
    assert out[-1] == "made 9 changes"
    assert out[:2] == [f"+ keys 1: {key_fingerprint(K1)}", f"+ keys 2: {key_fingerprint(K2)}"]
    assert out[2:4] == ["+ clusters 1: local", "+ clusters 2: local"]  # those it has ids of
    assert set(out[4:6]) == {f"+ txr_addrs {A}: 2", f"+ txr_addrs {B}: 1"}
    assert out[6:9] == [
        f"+ transceivers 1/7: {A}",
        f"+ transceivers 1/8: {A}",
        f"+ transceivers 2/1: {B}",
    ]
    shown = lab.json("map", "show")
    assert shown["txr_addrs"] == {A: 2, B: 1}
    assert [(t["cluster"], t["id"], t["tunnel"]) for t in shown["transceivers"]] == [
        (1, 7, A),
        (1, 8, A),
        (2, 1, B),
    ]
    # k0/k1 are the little-endian halves of the key (the spec's SipHash key split).
    assert _raw_keys(lab) == {
        1: (int.from_bytes(K1[:8], "little"), int.from_bytes(K1[8:], "little"), 1),
        2: (int.from_bytes(K2[:8], "little"), int.from_bytes(K2[8:], "little"), 1),
    }

    f2 = _write(tmp_path / "r2.json", {2: K2B, 3: K3}, [(1, 7, A), (1, 8, C), (3, 3, A)])
    dry = lab.relayctl("map", "sync", "--name", lab.name, "--file", f2, "--dry-run").stdout
    assert "would make 10 changes" in dry and lab.json("map", "show") == shown
    out = lab.relayctl("map", "sync", "--name", lab.name, "--file", f2).stdout.splitlines()
    assert out == [
        f"+ keys 3: {key_fingerprint(K3)}",
        f"~ keys 2: {key_fingerprint(K2)} -> {key_fingerprint(K2B)}",
        "+ clusters 3: local",
        f"+ txr_addrs {C}: 1",
        f"+ transceivers 3/3: {A}",
        f"~ transceivers 1/8: {A} -> {C}",
        f"- transceivers 2/1: {B}",
        f"- txr_addrs {B}: 1",
        "- clusters 2: local",
        f"- keys 1: {key_fingerprint(K1)}",
        "made 10 changes",
    ]
    shown = lab.json("map", "show")
    assert shown["txr_addrs"] == {A: 2, C: 1}
    assert shown["keys"] == {"2": key_fingerprint(K2B), "3": key_fingerprint(K3)}
    assert set(_raw_keys(lab)) == {2, 3}  # slot 1 zeroed, live 0
    again = lab.relayctl("map", "sync", "--name", lab.name, "--file", f2).stdout
    assert again.strip() == "maps already in sync"

    # An empty registry (say, a Redis that just restarted) does not wipe the relay...
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    res = lab.relayctl("map", "sync", "--name", lab.name, "--file", str(empty))
    assert res.stdout.strip() == "maps already in sync"
    assert "registry has no keys: kept the 2 loaded" in res.stderr
    assert lab.json("map", "show") == shown
    # ...unless asked to.
    out = lab.relayctl("map", "sync", "--name", lab.name, "--file", str(empty), "--allow-empty")
    # 2 keys, 2 clusters, 3 transceivers, 2 addrs
    assert out.stdout.splitlines()[-1] == "made 9 changes"
    cleared = lab.json("map", "show")
    assert cleared["keys"] == {} and cleared["transceivers"] == [] and cleared["txr_addrs"] == {}


def test_sync_redis_and_watch(loaded: Lab, redis_url: str) -> None:
    lab = loaded
    r = redis.Redis.from_url(redis_url)
    try:
        registry.set_key(r, 1, K1)
        registry.register(r, TransceiverRecord(1, 7, A), ttl=60)
        registry.register(r, TransceiverRecord(1, 9, B), ttl=60)
        sync = ("map", "sync", "--name", lab.name, "--redis", redis_url)
        got = json.loads(lab.relayctl(*sync, "--json").stdout)
        assert sorted((c["table"], c["action"], c["key"]) for c in got["changes"]) == [
            ("clusters", "add", "1"),
            ("keys", "add", "1"),
            ("transceivers", "add", "1/7"),
            ("transceivers", "add", "1/9"),
            ("txr_addrs", "add", A),
            ("txr_addrs", "add", B),
        ]
        registry.deregister(r, TransceiverRecord(1, 9, B))
        out = lab.relayctl(*sync).stdout.splitlines()
        assert out == [f"- transceivers 1/9: {B}", f"- txr_addrs {B}: 1", "made 2 changes"]
        assert lab.json("map", "show")["txr_addrs"] == {A: 1}

        # --watch picks up a new registration without being asked again.
        cmd = [
            "nsenter",
            f"--net=/run/netns/{lab.relay_ns}",
            RELAYCTL,
            *sync,
            "--watch",
            "--interval",
            "0.5",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            registry.register(r, TransceiverRecord(4, 2, C), ttl=60)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if lab.json("map", "show")["txr_addrs"].get(C) == 1:
                    break
                time.sleep(0.1)
            assert lab.json("map", "show")["txr_addrs"] == {A: 1, C: 1}
        finally:
            proc.terminate()
            stdout, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and f"+ transceivers 4/2: {C}" in stdout
    finally:
        r.close()


def test_ufrag_decode_uses_loaded_keys(loaded: Lab, tmp_path: Path) -> None:
    lab = loaded
    lab.relayctl(
        "map",
        "sync",
        "--name",
        lab.name,
        "--file",
        _write(tmp_path / "r.json", {1: K1}, [(1, 7, A)]),
    )
    from wire import ufrag

    good = ufrag.mint(1, K1, 1, 7)
    info = json.loads(lab.relayctl("ufrag", "decode", "--name", lab.name, good, "--json").stdout)
    assert info["tag_ok"] is True and info["routes_to"] == A
    assert (info["cluster"], info["transceiver"], info["key_id"]) == (1, 7, 1)
    other = ufrag.mint(1, K2, 1, 8)
    res = lab.relayctl("ufrag", "decode", "--name", lab.name, other, "--json", check=False)
    info = json.loads(res.stdout)
    assert res.returncode == 1 and info["tag_ok"] is False and "bad_tag" in info["verdict"]
    assert info["routes_to"].startswith("unknown transceiver")
    assert os.geteuid() == 0


def _txr_gen(lab: Lab) -> int:
    with PinnedMap(BPFFS / lab.name / "txr_gen", SPECS["txr_gen"]) as gen:
        return int(gen.lookup(ct.c_uint32(0)).value)


def test_sync_bumps_txr_gen_after_a_removal_or_move_only(loaded: Lab, tmp_path: Path) -> None:
    """Flows cache their transceiver's endpoint under txr_gen (bpf/relay.c flow_transceiver):
    load starts it at 1, a sync that only adds leaves it, one that moves or removes a
    transceiver gives it the next value, once; a reload keeps it."""
    lab = loaded
    assert _txr_gen(lab) == 1

    def sync(name: str, txrs: list[tuple[int, int, str]]) -> None:
        lab.relayctl(
            "map", "sync", "--name", lab.name, "--file", _write(tmp_path / name, {1: K1}, txrs)
        )

    sync("add.json", [(1, 7, A), (1, 8, A)])
    assert _txr_gen(lab) == 1
    sync("move.json", [(1, 7, B), (1, 8, A)])
    assert _txr_gen(lab) == 2
    sync("remove.json", [(1, 7, B)])
    assert _txr_gen(lab) == 3
    sync("same.json", [(1, 7, B)])
    assert _txr_gen(lab) == 3
    lab.load()
    assert _txr_gen(lab) == 3
