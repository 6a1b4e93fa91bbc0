"""`relayctl run` follows remote clusters (control/fleet.py, docs/fleet.md): a cluster record
in the relay's own registry that names another registry brings that cluster's transceivers (and
only that cluster's) and its keys into the map, marks the cluster remote in `clusters`, and
registers the relay there so its transceivers accept the relay's tunnel datagrams. A remote
registry that stops answering keeps its view for --remote-grace, then its transceivers leave;
a removed record takes them out at once. Two real redis-servers, the real relay's maps."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from control.sync import MapState
from datapath.maps import CLUSTER_LOCAL, CLUSTER_REMOTE
from lab.redis_server import RedisServer
from lab.wait import wait_until
from tests.control.ctl_lab import RELAY_ADDR, Lab
from tests.control.runlab import RunProc, map_state
from wire import registry
from wire.defaults import RELAY_TUNNEL_PORT
from wire.registry import ClusterRecord, TransceiverRecord

pytestmark = pytest.mark.lab
KEY1 = secrets.token_bytes(16)
KEY_REMOTE = secrets.token_bytes(16)
LOCAL = TransceiverRecord(cluster=1, id=7, tunnel="198.18.2.7:5000")
REMOTE = TransceiverRecord(cluster=2, id=3, tunnel="198.18.2.30:5000")
STRAY = TransceiverRecord(cluster=9, id=4, tunnel="198.18.2.40:5000")  # in the remote registry


def client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


@pytest.fixture
def remote() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def served(name: str) -> MapState:
    return map_state(name)


def test_a_remote_cluster_is_followed_and_let_go(
    loaded: Lab, redis_url: str, remote: RedisServer
) -> None:
    mine, theirs = client(redis_url), client(remote.url)
    registry.set_key(mine, 1, KEY1)
    registry.set_current_key(mine, 1)
    registry.register(mine, LOCAL, ttl=600)  # outlives the test (it runs past REGISTRY_TTL)
    registry.set_key(theirs, 1, KEY1)  # keys are fleet-wide: the same in every registry
    registry.set_key(theirs, 5, KEY_REMOTE)
    registry.register(theirs, REMOTE, ttl=600)
    registry.register(theirs, STRAY, ttl=600)
    registry.put_cluster(mine, ClusterRecord(2, "eu-west", 50.1, 8.7, remote.url))
    region = ("--region", "ap-south", "--lat", "19.1", "--lon", "72.9")
    proc = RunProc(loaded.relay_ns, loaded.name, redis_url, "--remote-grace", "6", *region)
    try:
        proc.wait_ready()
        wait_until(lambda: (2, 3) in served(loaded.name).transceivers, 5, "the remote one")
        # --region: its region reaches both registries, and says so in each, again and again
        for r in (mine, theirs):
            wait_until(lambda r=r: "ap-south" in registry.read_reach(r)[0], 5, "reach reported")
        first = registry.read_reach(theirs)[0]["ap-south"]
        assert (first.lat, first.lon) == (19.1, 72.9) and abs(first.at - time.time()) < 5
        wait_until(
            lambda: registry.read_reach(theirs)[0]["ap-south"].at > first.at, 10, "reported again"
        )
        state = served(loaded.name)
        assert state.transceivers == {(1, 7): ("198.18.2.7", 5000), (2, 3): ("198.18.2.30", 5000)}
        assert state.clusters == {1: CLUSTER_LOCAL, 2: CLUSTER_REMOTE}
        assert state.keys == {1: KEY1, 5: KEY_REMOTE}
        # the relay announced itself in the remote registry too
        wait_until(lambda: RELAY_ADDR in registry.read_relays(theirs)[0], 5, "announced there")
        relays, _ = registry.read_relays(theirs)
        assert relays[RELAY_ADDR].tunnel == f"{RELAY_ADDR}:{RELAY_TUNNEL_PORT}"
        metrics = proc.metrics()
        assert metrics["relayctl_remote_registry_up{cluster=2}"] == 1
        assert metrics["relayctl_remote_transceivers{cluster=2}"] == 1

        # the remote registry goes away: the view stays for the grace, then the entries go
        remote.stop()
        wait_until(lambda: "unreachable" in proc.text(), 10, "the outage logged")
        # checked first: the reach wait below may outlast the grace on a busy machine
        assert (2, 3) in served(loaded.name).transceivers  # kept within the grace
        last = registry.read_reach(mine)[0]["ap-south"].at
        wait_until(  # the local registry still hears from it
            lambda: registry.read_reach(mine)[0]["ap-south"].at > last, 10, "local reach"
        )
        wait_until(lambda: (2, 3) not in served(loaded.name).transceivers, 15, "grace over")
        assert (1, 7) in served(loaded.name).transceivers
        assert "left the map" in proc.text()
        assert proc.metrics()["relayctl_remote_registry_up{cluster=2}"] == 0

        # back, then the record removed: out at once, the cluster no longer served
        remote.start()
        theirs.close()
        theirs = client(remote.url)
        registry.register(theirs, REMOTE, ttl=600)
        wait_until(lambda: (2, 3) in served(loaded.name).transceivers, 10, "back")
        registry.remove_cluster(mine, 2)
        wait_until(lambda: 2 not in served(loaded.name).clusters, 5, "record removed")
        assert (2, 3) not in served(loaded.name).transceivers
        assert "relayctl_remote_registry_up{cluster=2}" not in proc.metrics()
        assert proc.alive() and "Traceback" not in proc.text()
    finally:
        proc.close()
        mine.close()
        theirs.close()


def test_a_remote_registry_cannot_replace_local_entries(
    loaded: Lab, redis_url: str, remote: RedisServer
) -> None:
    mine, theirs = client(redis_url), client(remote.url)
    registry.set_key(mine, 1, KEY1)
    registry.set_current_key(mine, 1)
    forged = TransceiverRecord(cluster=2, id=3, tunnel="198.18.2.99:5000")
    registry.register(mine, REMOTE)  # cluster 2's 3 is (also) registered here
    registry.register(theirs, forged, ttl=600)
    registry.set_key(theirs, 1, secrets.token_bytes(16))  # a different key 1
    registry.put_cluster(mine, ClusterRecord(2, "eu-west", 50.1, 8.7, remote.url))
    proc = RunProc(loaded.relay_ns, loaded.name, redis_url)
    try:
        proc.wait_ready()
        wait_until(lambda: "the local entry wins" in proc.text(), 5, "the conflict reported")
        wait_until(lambda: "the local key wins" in proc.text(), 5, "the key conflict reported")
        state = served(loaded.name)
        assert state.transceivers == {(2, 3): ("198.18.2.30", 5000)}
        assert state.keys == {1: KEY1}
    finally:
        proc.close()
        mine.close()
        theirs.close()


def test_a_one_shot_map_sync_follows_remote_clusters_too(
    loaded: Lab, redis_url: str, remote: RedisServer
) -> None:
    """`relayctl map sync --redis` on a relay that `run` also serves: the remote cluster's
    transceivers are synced in, and kept as loaded while their registry cannot be read."""
    mine, theirs = client(redis_url), client(remote.url)
    registry.set_key(mine, 1, KEY1)
    registry.register(mine, LOCAL, ttl=600)
    registry.register(theirs, REMOTE, ttl=600)
    registry.put_cluster(mine, ClusterRecord(2, "eu-west", 50.1, 8.7, remote.url))
    sync = ("map", "sync", "--name", loaded.name, "--redis", redis_url)
    try:
        out = loaded.relayctl(*sync).stdout
        assert "+ clusters 2: remote" in out and "+ transceivers 2/3: 198.18.2.30:5000" in out
        remote.stop()
        res = loaded.relayctl(*sync)
        assert res.stdout.strip() == "maps already in sync"
        assert "unreachable" in res.stderr and "Traceback" not in res.stderr
        assert (2, 3) in served(loaded.name).transceivers
    finally:
        mine.close()
        theirs.close()
