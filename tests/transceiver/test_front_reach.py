"""The front places a call only on a cluster the client's region reaches (transceiver/front.py,
docs/fleet.md): relays run with --region report, in each registry they read, that their region
got there; a client enters the fleet at its nearest live region; a cluster that region has not
reached within REACH_FRESH takes none of its calls, and a fleet without reports is placed as
before. The views are real FleetView reads of a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from transceiver.front import FleetView, Locator, ingress_region, placement
from wire import registry
from wire.defaults import REACH_FRESH
from wire.registry import ClusterRecord, ReachReport, TransceiverRecord

US = ClusterRecord(1, "us-east", 40.7, -74.0)
EU = ClusterRecord(2, "eu-west", 50.1, 8.7)
MUMBAI, PARIS = (19.0, 72.8), (48.86, 2.35)
NOW = 1_800_000_000.0


def region(name: str, at: float) -> ReachReport:
    where = {"us-east": (40.7, -74.0), "eu-west": (50.1, 8.7), "ap-south": (19.1, 72.9)}[name]
    return ReachReport(name, *where, at)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    for rec in (US, EU):
        registry.put_cluster(client, rec)
        registry.register(
            client,
            TransceiverRecord(
                rec.id, 7, f"10.{rec.id}.0.3:5000", capacity=10, http="http://10.0.0.3:8080"
            ),
            ttl=60,
        )
    yield client
    client.close()


def view_of(redis_url: str, wall: float = NOW) -> FleetView:
    view = FleetView(redis_url, wall=lambda: wall)
    view.refresh()
    return view


def clusters(view: FleetView, where: tuple[float, float]) -> list[int]:
    return [c.record.id for c, _ in placement(view, where, view.clock())]


def test_without_reports_every_cluster_is_a_candidate(r: redis.Redis, redis_url: str) -> None:
    view = view_of(redis_url)
    assert ingress_region(view, MUMBAI, NOW) is None
    assert clusters(view, MUMBAI) == [2, 1] and clusters(view, PARIS) == [2, 1]
    view.close()


def test_a_cluster_the_client_region_does_not_reach_takes_none_of_its_calls(
    r: redis.Redis, redis_url: str
) -> None:
    # one registry here holds both clusters: the reports say who reaches it
    for name in ("us-east", "eu-west", "ap-south"):
        registry.report_reach(r, region(name, NOW - 1))
    view = view_of(redis_url)
    assert ingress_region(view, MUMBAI, NOW) == "ap-south"
    assert clusters(view, MUMBAI) == [2, 1]
    # ap-south's relays have not reached it for longer than REACH_FRESH: no cluster there
    # takes a Mumbai call, Paris (eu-west's region, still reporting) is unaffected
    registry.report_reach(r, region("ap-south", NOW - REACH_FRESH - 1))
    view = view_of(redis_url)
    # a region that reports nothing is down (anycast takes its clients elsewhere): Mumbai
    # enters at the nearest live one
    assert ingress_region(view, MUMBAI, NOW) == "eu-west"
    assert clusters(view, MUMBAI) == [2, 1] and clusters(view, PARIS) == [2, 1]
    view.close()


def test_reach_is_per_cluster_registry(redis_url: str) -> None:
    """Two registries: EU's hears from ap-south no more (the backbone path is cut), US's does."""
    from lab.redis_server import RedisServer

    with RedisServer() as eu_server:
        fleet = redis.Redis.from_url(redis_url)
        eu = redis.Redis.from_url(eu_server.url)
        try:
            registry.put_cluster(fleet, US)
            registry.put_cluster(fleet, ClusterRecord(2, "eu-west", 50.1, 8.7, eu_server.url))
            for client, rec in ((fleet, US), (eu, EU)):
                txr = TransceiverRecord(
                    rec.id, 7, "10.0.0.3:5000", capacity=10, http="http://10.0.0.3:8080"
                )
                registry.register(client, txr, ttl=60)
            for name in ("us-east", "ap-south"):
                registry.report_reach(fleet, region(name, NOW - 1))
            registry.report_reach(eu, region("eu-west", NOW - 1))
            registry.report_reach(eu, region("ap-south", NOW - 60))  # cut a minute ago
            view = view_of(redis_url)
            assert set(view.clusters[2].reach) == {"eu-west", "ap-south"}
            assert clusters(view, MUMBAI) == [1]  # EU is nearer, but unreachable from ap-south
            assert clusters(view, PARIS) == [2]  # eu-west reaches only its own
            assert clusters(view, (40.0, -75.0)) == [1]
            # a region name only relays report (no cluster there) is a location too
            loc = Locator(view, "X-Edge-Location", "us-east")
            assert loc._parse("ap-south") == (19.1, 72.9)
            registry.report_reach(eu, region("ap-south", NOW))  # healed
            view.refresh()
            assert clusters(view, MUMBAI) == [2, 1]
            view.close()
        finally:
            fleet.close()
            eu.close()


def test_a_malformed_report_is_skipped_not_fatal(r: redis.Redis, redis_url: str) -> None:
    registry.report_reach(r, region("ap-south", NOW))
    r.hset("edge:reach", "eu-west", "garbage")
    view = view_of(redis_url)
    assert set(view.clusters[1].reach) == {"ap-south"}
    assert clusters(view, MUMBAI) == [2, 1] and clusters(view, PARIS) == [2, 1]
    view.close()
