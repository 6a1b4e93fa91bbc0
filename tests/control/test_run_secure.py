"""`relayctl run` and `transceiver serve` against a Redis that wants TLS with client
certificates and ACL users (deploy/redis/users.conf), as production runs it: sync, events, the
relay's announcement, flow export and the slow path for the relay user; registration and keys
for a transceiver user. No password is ever on a command line."""

from __future__ import annotations

import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.sync import key_fingerprint
from datapath.maps import FlowKey, FlowVal, RelayMaps, be16, be32
from lab import netns
from lab.wait import wait_until
from tests.control.ctl_lab import CLIENT_ADDR, RELAY_ADDR, Lab
from tests.control.runlab import BPFFS, RunProc, map_state
from tests.control.secure_redis import SecureRedis
from wire import registry

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]
TRANSCEIVER = str(Path(sys.executable).parent / "transceiver")
KEY = secrets.token_bytes(16)
VPORT = 3478


@pytest.fixture
def sr(loaded: Lab) -> Iterator[SecureRedis]:
    with SecureRedis(ns=loaded.relay_ns) as s:
        admin = s.admin()
        registry.set_key(admin, 1, KEY)
        registry.set_current_key(admin, 1)
        admin.close()
        yield s


def url_for(sr: SecureRedis, user: str) -> str:
    """The user and the TLS files in the URL; the password stays in a file."""
    d = sr.dir
    return (
        f"rediss://{user}@127.0.0.1:{sr.port}/0?ssl_ca_certs={d}/ca.crt"
        f"&ssl_certfile={d}/client.crt&ssl_keyfile={d}/client.key"
    )


def test_run_and_transceiver_over_tls_with_acl_users(loaded: Lab, sr: SecureRedis) -> None:
    admin = sr.admin()
    proc = RunProc(
        loaded.relay_ns,
        loaded.name,
        url_for(sr, "relay"),
        "--redis-password-file",
        sr.password_file("relay"),
    )
    txr = None
    try:
        proc.wait_ready()
        assert map_state(loaded.name).keys == {1: KEY}, proc.text()  # synced as the relay user
        text = proc.text()
        assert sr.passwords["relay"] not in text and "warning" not in text, text
        # The relay announced itself, with the fingerprint of the key it holds.
        wait_until(
            lambda: registry.read_relays(admin)[0].get(RELAY_ADDR) is not None, 5, "announce"
        )
        rec = registry.read_relays(admin)[0][RELAY_ADDR]
        assert rec.keys == ((1, key_fingerprint(KEY)),)
        # Flow export as the relay user (the Lua script runs under its ACL).
        with RelayMaps(BPFFS / loaded.name) as maps:
            key = FlowKey(be32(CLIENT_ADDR), be32(RELAY_ADDR), be16(41999), be16(VPORT))
            maps["flows"].update(key, FlowVal(1, 0, 7, time.monotonic_ns()))
        name = registry.flow_key("edge", CLIENT_ADDR, 41999, RELAY_ADDR, VPORT)
        wait_until(lambda: admin.get(name) == b"1:7", 5, "the flow exported")
        # The slow path asks Redis (MGET) as the relay user: an unknown flow, not redis_down.
        loaded.send_udp([b"\x17\xfe\xfd" + bytes(40)], VPORT, sport=41000)
        wait_until(
            lambda: proc.metrics()["relayctl_slow_path_packets_total{outcome=unknown_flow}"] == 1,
            5,
            "slow path lookup",
        )
        assert proc.metrics()["relayctl_slow_path_packets_total{outcome=redis_down}"] == 0

        # A transceiver with its own ACL user registers, reads the keys, and (events) reaches
        # the relay's map within a second.
        argv = [TRANSCEIVER, "serve", "--listen=127.0.0.1:0", "--udp=127.0.0.1:0",
                "--cluster=1", "--id=7", "--tunnel=198.18.0.7:5000", "--drain-timeout=0",
                "--no-auth",  # signaling auth: tests/transceiver/test_signaling_*.py
                f"--redis={url_for(sr, 'txr-1-7')}",
                f"--redis-password-file={sr.password_file('txr-1-7')}"]  # fmt: skip
        log = sr.dir / "txr.log"
        with log.open("wb") as err:
            txr = subprocess.Popen(
                netns.nsenter_argv(loaded.relay_ns, argv), stdout=subprocess.PIPE, stderr=err
            )
        assert txr.stdout is not None
        ready, _, _ = select.select([txr.stdout], [], [], 30)
        line = txr.stdout.readline() if ready else b""
        assert b"transceiver ready" in line, f"{line!r}\n{log.read_text()[-2000:]}"
        assert admin.hget("edge:txr:1:7", "tunnel") == b"198.18.0.7:5000"
        assert "routing keys [1], current 1" in log.read_text()
        wait_until(
            lambda: (1, 7) in map_state(loaded.name).transceivers, 1.5, "1/7 in the relay's map"
        )
        txr.send_signal(signal.SIGTERM)
        assert txr.wait(timeout=30) == 0
        assert not admin.exists("edge:txr:1:7")  # deregistered as its own user
        assert "Traceback" not in log.read_text() + proc.text()
        assert sr.passwords["txr-1-7"] not in log.read_text()
        assert proc.alive()
    finally:
        if txr is not None and txr.poll() is None:
            txr.kill()
            txr.wait()
        proc.close()
        admin.close()
