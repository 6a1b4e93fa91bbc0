"""`relayctl run` keeps the maps equal to the Redis registry within a second: transceivers
that come, go, move, drain and expire; keys; the slow-path flag; errors without tracebacks."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control.sync import MapState
from lab.wait import wait_until
from tests.control.ctl_lab import RELAY_ADDR, Lab
from tests.control.runlab import RunProc, config_flags, map_state
from wire import registry
from wire.defaults import RELAY_TTL, RELAY_TUNNEL_PORT
from wire.registry import TransceiverRecord

pytestmark = pytest.mark.lab
KEY1 = secrets.token_bytes(16)
KEY2 = secrets.token_bytes(16)


def txr(tid: int, port: int = 5000, **kw: object) -> TransceiverRecord:
    return TransceiverRecord(cluster=1, id=tid, tunnel=f"198.18.2.{tid}:{port}", **kw)  # type: ignore[arg-type]


@pytest.fixture
def run_proc(loaded: Lab, redis_url: str) -> Iterator[RunProc]:
    r = registry_client(redis_url)
    registry.set_key(r, 1, KEY1)
    registry.set_current_key(r, 1)
    registry.register(r, txr(7))
    r.close()
    proc = RunProc(loaded.relay_ns, loaded.name, redis_url)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


def registry_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def within_a_second(name: str, pred: Callable[[MapState], bool], what: str) -> float:
    """Seconds until pred(map state) holds; fails past 1 s."""
    start = time.monotonic()
    wait_until(lambda: pred(map_state(name)), 1.0, what)
    return time.monotonic() - start


def test_registry_changes_reach_the_map_within_a_second(
    loaded: Lab, redis_url: str, run_proc: RunProc
) -> None:
    name = loaded.name
    # The state at start: key 1 and transceiver 1/7 (synced before `ready`).
    state = map_state(name)
    assert state.keys == {1: KEY1}
    assert state.transceivers == {(1, 7): ("198.18.2.7", 5000)}
    assert state.txr_addrs == {("198.18.2.7", 5000): 1}
    r = registry_client(redis_url)
    try:
        registry.register(r, txr(8))
        within_a_second(name, lambda s: (1, 8) in s.transceivers, "1/8 added")
        registry.register(r, txr(8, port=5001))  # moved
        within_a_second(
            name, lambda s: s.transceivers.get((1, 8)) == ("198.18.2.8", 5001), "1/8 moved"
        )
        registry.deregister(r, txr(8))
        within_a_second(name, lambda s: (1, 8) not in s.transceivers, "1/8 removed")
        assert ("198.18.2.8", 5001) not in map_state(name).txr_addrs
        registry.set_key(r, 2, KEY2)
        within_a_second(name, lambda s: s.keys == {1: KEY1, 2: KEY2}, "key 2 added")
        registry.remove_key(r, 1)
        within_a_second(name, lambda s: s.keys == {2: KEY2}, "key 1 removed")

        # Death: an entry that is not refreshed expires silently (no event); polling finds it.
        registry.register(r, txr(9), ttl=0.6)
        within_a_second(name, lambda s: (1, 9) in s.transceivers, "1/9 added")
        wait_until(lambda: not r.exists(registry.txr_key("edge", 1, 9)), 5, "1/9 to expire")
        within_a_second(name, lambda s: (1, 9) not in s.transceivers, "1/9 gone after expiry")

        # Draining: its running calls continue, so it stays in the map (and is counted).
        registry.register(r, txr(7, draining=True))
        passes = run_proc.metrics()["relayctl_sync_passes_total{result=ok}"]
        wait_until(
            lambda: run_proc.metrics()["relayctl_sync_passes_total{result=ok}"] >= passes + 2,
            5,
            "two more sync passes",
        )
        metrics = run_proc.metrics()
        assert (1, 7) in map_state(name).transceivers
        assert metrics["relayctl_transceivers_draining"] == 1
        assert metrics["relayctl_transceivers"] == 1
        assert metrics["relayctl_redis_up"] == 1
        assert metrics["relayctl_sync_age_seconds"] < 2
        assert metrics["relayctl_relay_loaded"] == 1
        assert metrics["relayctl_sync_changes_total{action=add,table=transceivers}"] >= 2
        assert "relayctl_xdp_packets_total{reason=pass_slow_path}" in metrics
    finally:
        r.close()
    assert run_proc.alive()
    assert "Traceback" not in run_proc.text()


def test_slow_path_flag_follows_the_controller(
    loaded: Lab, redis_url: str, run_proc: RunProc
) -> None:
    name = loaded.name
    assert config_flags(name) & 1
    assert run_proc.metrics()["relayctl_slow_path_enabled"] == 1
    # A reload writes config with flags 0: the controller sets the flag again.
    loaded.load("--mode", "native")
    wait_until(lambda: config_flags(name) & 1, 2.0, "the flag set again after a reload")
    assert run_proc.stop() == 0
    assert config_flags(name) & 1 == 0, "the flag must be cleared on exit"
    assert map_state(name).transceivers == {(1, 7): ("198.18.2.7", 5000)}, "maps stay"
    assert "Traceback" not in run_proc.text()


def test_errors_are_one_line(lab: Lab, redis_url: str) -> None:
    res = lab.relayctl("run", "--name", lab.name, "--redis", redis_url, check=False)
    assert res.returncode == 1
    assert "relayctl: error: nothing loaded under" in res.stderr
    res = lab.relayctl(
        "run", "--name", lab.name, "--redis", "redis://", "--metrics", "x", check=False
    )
    assert res.returncode == 2 and "--metrics" in res.stderr


def test_redis_unreachable_at_start(loaded: Lab, tmp_path: Path) -> None:
    proc = RunProc(loaded.relay_ns, loaded.name, f"unix://{tmp_path}/nothing.sock")
    try:
        proc.wait_ready()
        wait_until(lambda: proc.metrics()["relayctl_redis_up"] == 0, 5, "redis_up 0")
        assert proc.metrics()["relayctl_sync_passes_total{result=error}"] >= 1
        assert proc.alive()
        assert proc.stop() == 0
        assert "redis unreachable" in proc.text() and "Traceback" not in proc.text()
    finally:
        proc.close()


def test_unload_and_load_under_a_running_controller(
    loaded: Lab, redis_url: str, run_proc: RunProc
) -> None:
    """The controller's fds would keep the old maps alive: it must notice new pins and fill them."""
    name = loaded.name
    loaded.relayctl("unload", "--name", name)
    loaded.relayctl(
        "load",
        "--name",
        name,
        "--iface",
        "va",
        "--vip",
        f"{RELAY_ADDR}:3478",
        "--tunnel",
        f"{RELAY_ADDR}:6080",
        "--mode",
        "native",
    )
    wait_until(
        lambda: map_state(name).transceivers == {(1, 7): ("198.18.2.7", 5000)},
        2.0,
        "the new maps synced",
    )
    wait_until(lambda: config_flags(name) & 1, 2.0, "the flag set on the new config")
    assert map_state(name).keys == {1: KEY1}
    assert run_proc.alive() and "Traceback" not in run_proc.text()
    assert run_proc.stop() == 0
    assert config_flags(name) & 1 == 0


def test_run_registers_the_relays_tunnel_source(
    loaded: Lab, redis_url: str, run_proc: RunProc
) -> None:
    # Registered before `ready`: transceivers accept tunnel datagrams only from relays listed.
    r = registry_client(redis_url)
    try:
        relays, problems = registry.read_relays(r)
        assert not problems
        assert relays[RELAY_ADDR].tunnel == f"{RELAY_ADDR}:{RELAY_TUNNEL_PORT}"
        assert relays[RELAY_ADDR].name.endswith(f"/{loaded.name}")
        assert 0 < r.pttl(registry.relay_key("edge", RELAY_ADDR)) <= RELAY_TTL * 1000
    finally:
        r.close()
