"""The fleet's signaling front: one URL for every client, each new call placed at the nearest
cluster that can take it (docs/front.md).

`FleetView` keeps, every REFRESH, the cluster records of the fleet registry and, from each
cluster's own registry, its transceivers (capacity, active calls, draining, signaling URL).
`placement` orders the candidates for a client location: clusters not draining, read recently,
with free capacity, that the client's region reaches (below), nearest first (great-circle
distance); in a cluster, the transceiver with the most free capacity first.

Reach: relays run with `--region` report, in every registry they read (theirs, each remote one
over the backbone), that their region got there (`{prefix}:reach`). The client enters the fleet
at its nearest live region (anycast); a cluster whose registry that region has not reached
within REACH_FRESH (a cut backbone path, a partition) takes none of its new calls.

The HTTP app forwards the offer to the first that takes it (a transceiver
that is down, full or draining passes it to the next, at most ATTEMPTS), returns its answer as it
is (the candidates are the fleet's global VIP: the client reaches its nearest relay whatever
cluster the call is on), and rewrites the call's Location to a front URL that names the
transceiver, through which PATCH (ICE restart) and DELETE reach the same call.

The front holds no call state: any front instance serves any call's URL. It never connects
anywhere but a registered transceiver's `http` URL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from transceiver import clientaddr
from wire import registry as wreg
from wire.defaults import REACH_FRESH
from wire.redisconn import Backoff, connect, redact

log = logging.getLogger("transceiver.front")

CALLS_PATH = "/v1/calls"
TOKENS_PATH = "/v1/tokens"
REFRESH = 1.0  # s between reads of the registries
STALE = 10.0  # s: a cluster whose registry was not read for this long takes no new calls
ATTEMPTS = 3  # transceivers an offer is tried on before the client gets a 503
BACKEND_TIMEOUT = 10.0  # s for a transceiver's answer (it answers an offer in ~5-30 ms)
REDIS_TIMEOUT = 1.0
MAX_BODY = 64 * 1024  # the transceiver's own offer limit (server.MAX_OFFER_BYTES)
RETRY_AFTER = "2"
EARTH_KM = 6371.0
_RESOURCE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
# The headers a client's request carries to the transceiver, and its answer's back to the client.
_FORWARD = ("Authorization", "Content-Type", "If-Match")
_ANSWER = ("Content-Type", "ETag", "Link", "Cache-Control", "Retry-After", "Allow")


@dataclass
class ClusterView:
    record: wreg.ClusterRecord
    transceivers: list[wreg.TransceiverRecord] = field(default_factory=list)
    read_at: float = 0.0  # monotonic; 0: never
    reach: dict[str, wreg.ReachReport] = field(default_factory=dict)  # regions reaching it


@dataclass
class _Registry:
    url: str
    client: Any
    backoff: Backoff = field(default_factory=Backoff)


class FleetView:
    """The fleet as the front sees it: refreshed by `refresh()` (run() loops it)."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = wreg.REDIS_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.clock = clock
        self.wall = wall  # reach reports carry the relays' wall clock
        self.clusters: dict[int, ClusterView] = {}
        self._registries: dict[str, _Registry] = {}
        self.read_failures: Counter | None = None

    def _registry(self, url: str) -> _Registry:
        reg = self._registries.get(url)
        if reg is None:
            client = connect(url, timeout=REDIS_TIMEOUT, retries=False)
            reg = self._registries[url] = _Registry(url, client)
        return reg

    def refresh(self) -> None:
        """Read the cluster records, then each cluster's transceivers; a failing registry only
        ages its clusters' views (never blocks the others). Runs in a thread: the new view is
        built apart and put in place in one assignment."""
        import redis

        fleet = self._registry(self.redis_url)
        try:
            records, problems = wreg.read_clusters(fleet.client, prefix=self.prefix)
            fleet.backoff.succeeded()
        except redis.RedisError as exc:
            fleet.backoff.failed()
            self._failed(self.redis_url, exc)
            return
        for p in problems:
            log.warning("fleet registry: %s", p)
        old = self.clusters
        new = {
            cid: ClusterView(rec, old[cid].transceivers, old[cid].read_at, old[cid].reach)
            if cid in old
            else ClusterView(rec)
            for cid, rec in records.items()
        }
        by_url: dict[str, list[int]] = {}
        for cid, rec in records.items():
            by_url.setdefault(rec.registry or self.redis_url, []).append(cid)
        for url, cids in by_url.items():
            try:
                reg = self._registry(url)
            except ValueError as exc:
                log.warning("cluster %s: registry %s: %s", cids, redact(url), exc)
                continue
            if not reg.backoff.ready():
                continue
            try:  # transceivers and reach only: the front never reads keys
                theirs, _ = wreg.read_transceivers(reg.client, prefix=self.prefix)
                reach, problems = wreg.read_reach(reg.client, prefix=self.prefix)
            except redis.RedisError as exc:
                reg.backoff.failed()
                self._failed(url, exc)
                continue
            for p in problems:
                log.warning("registry %s: %s", redact(url), p)
            reg.backoff.succeeded()
            now = self.clock()
            for cid in cids:
                txrs = [t for t in theirs.values() if t.cluster == cid]
                new[cid] = ClusterView(records[cid], txrs, now, reach)
        self.clusters = new

    def _failed(self, url: str, exc: Exception) -> None:
        log.warning("registry %s unreachable: %s", redact(url), exc)
        if self.read_failures is not None:
            self.read_failures.labels(redact(url)).inc()

    def transceiver(self, cluster: int, txr_id: int) -> wreg.TransceiverRecord | None:
        view = self.clusters.get(cluster)
        if view is None:
            return None
        return next((t for t in view.transceivers if t.id == txr_id and t.http), None)

    def close(self) -> None:
        for reg in self._registries.values():
            reg.client.close()
        self._registries.clear()


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine) between two (lat, lon) in degrees."""
    lat1, lon1, lat2, lon2 = (math.radians(x) for x in (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def free(t: wreg.TransceiverRecord) -> int:
    return 0 if t.draining or not t.http else max(0, t.capacity - t.active)


def live_regions(view: FleetView, wall: float) -> dict[str, tuple[float, float]]:
    """Region -> (lat, lon) of every region whose relays reported reaching some registry
    within REACH_FRESH."""
    return {
        rep.region: (rep.lat, rep.lon)
        for c in view.clusters.values()
        for rep in c.reach.values()
        if wall - rep.at <= REACH_FRESH
    }


def ingress_region(view: FleetView, where: tuple[float, float], wall: float) -> str | None:
    """The region a client at `where` enters the fleet at: the nearest live region (anycast
    brings it to the nearest relays that announce the VIP; a region whose relays are down
    reports nothing). None when no relay reports its region (a fleet run without --region)."""
    regions = live_regions(view, wall)
    if not regions:
        return None
    return min(sorted(regions), key=lambda name: distance_km(where, regions[name]))


def reaches(cluster: ClusterView, region: str, wall: float) -> bool:
    """Whether region's relays read that cluster's registry lately (over the same backbone as
    its transceivers: a cut path stops the reports)."""
    rep = cluster.reach.get(region)
    return rep is not None and wall - rep.at <= REACH_FRESH


def placement(
    view: FleetView, where: tuple[float, float] | None, now: float, wall: float | None = None
) -> list[tuple[ClusterView, wreg.TransceiverRecord]]:
    """Where a new call from `where` may go, best first (see the module doc); from nowhere
    known, the cluster with the most room first. When relays report their regions' reach, only
    clusters the client's ingress region reaches are candidates."""
    wall = view.wall() if wall is None else wall
    clusters = [
        c
        for c in view.clusters.values()
        if not c.record.draining and c.read_at and now - c.read_at <= STALE
    ]
    entry = ingress_region(view, where, wall) if where is not None else None
    if entry is not None:
        clusters = [c for c in clusters if reaches(c, entry, wall)]
    if where is None:
        clusters.sort(key=lambda c: -sum(free(t) for t in c.transceivers))
    else:
        clusters.sort(key=lambda c: distance_km(where, (c.record.lat, c.record.lon)))
    out = []
    for c in clusters:
        for t in sorted(c.transceivers, key=free, reverse=True):
            if free(t) > 0:
                out.append((c, t))
    return out


class Locator:
    """The client's location from a header a CDN or load balancer in front sets: "LAT,LON" or
    a region name (of a cluster record or of a relay's reach report); anything else (or none):
    the default region's."""

    def __init__(self, view: FleetView, header: str, default_region: str) -> None:
        self.view = view
        self.header = header
        self.default_region = default_region

    def locate(self, request: web.Request) -> tuple[tuple[float, float] | None, bool]:
        """(lat, lon) or None (nowhere known), and whether the header was used."""
        value = request.headers.get(self.header, "").strip()
        if value:
            where = self._parse(value)
            if where is not None:
                return where, True
        return self._region(self.default_region), False

    def _parse(self, value: str) -> tuple[float, float] | None:
        if len(value) > 64:
            return None
        lat_s, sep, lon_s = value.partition(",")
        if sep:
            try:
                lat, lon = float(lat_s), float(lon_s)
            except ValueError:
                return None
            if -90 <= lat <= 90 and -180 <= lon <= 180:  # NaN fails both
                return lat, lon
            return None
        return self._region(value)

    def _region(self, name: str) -> tuple[float, float] | None:
        """A cluster's region, or a region only relays report (it has no cluster)."""
        for c in self.view.clusters.values():
            if c.record.region == name:
                return c.record.lat, c.record.lon
        return live_regions(self.view, self.view.wall()).get(name)


class FrontMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.placed = Counter(
            "front_calls_placed", "Offers answered, by cluster", ["cluster"], registry=r
        )
        self.overflows = Counter(
            "front_overflows", "Offers a transceiver passed on to the next candidate", registry=r
        )
        self.no_capacity = Counter(
            "front_no_capacity", "Offers no cluster could take (503)", registry=r
        )
        self.backend_errors = Counter(
            "front_backend_errors",
            "Transceivers that failed to answer (connection, timeout)",
            registry=r,
        )
        self.bad_location = Counter(
            "front_bad_location", "Requests whose location header was not usable", registry=r
        )
        self.registry_failures = Counter(
            "front_registry_read_failures", "Registry reads that failed", ["registry"], registry=r
        )


_VIEW: web.AppKey[FleetView] = web.AppKey("view")
_LOCATOR: web.AppKey[Locator] = web.AppKey("locator")
_METRICS: web.AppKey[FrontMetrics] = web.AppKey("metrics")
_HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http")
_TRUSTED: web.AppKey[tuple[clientaddr.Network, ...]] = web.AppKey("trusted_proxies")


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


def _forward_headers(request: web.Request) -> dict[str, str]:
    """The client's headers a transceiver gets, and X-Forwarded-For: the client's address (our
    peer) appended to the chain a trusted proxy (--trusted-proxy) sent, else alone (a client's
    own header never passes: the transceiver keys its POST budget on this, see clientaddr)."""
    headers = {h: request.headers[h] for h in _FORWARD if h in request.headers}
    chain = clientaddr.forward_chain(
        request.remote, request.headers.getall(clientaddr.HEADER, []), request.app[_TRUSTED]
    )
    if chain:
        headers[clientaddr.HEADER] = chain
    return headers


async def _body(request: web.Request) -> bytes | web.Response:
    """The whole body (a body in several TCP segments or chunks included: content.read(n)
    returns only what has arrived), a 413 beyond MAX_BODY (client_max_size, chunked too), or a
    408 when it does not come in time."""
    if (request.content_length or 0) > MAX_BODY:
        return _text(413, "body too large")
    try:
        return await asyncio.wait_for(request.read(), BACKEND_TIMEOUT)
    except web.HTTPRequestEntityTooLarge:
        return _text(413, "body too large")
    except TimeoutError:
        return _text(408, "request body too slow", Connection="close")


async def _relay(
    request: web.Request, method: str, url: str, body: bytes | None
) -> tuple[int, bytes, dict[str, list[str]]] | None:
    """One request to a transceiver: (status, body, answer headers), None when it failed."""
    http = request.app[_HTTP]
    try:
        async with http.request(
            method, url, data=body, headers=_forward_headers(request), allow_redirects=False
        ) as resp:
            data = await resp.read()
            headers = {h: resp.headers.getall(h) for h in _ANSWER if h in resp.headers}
            if "Location" in resp.headers:
                headers["Location"] = [resp.headers["Location"]]
            return resp.status, data, headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("%s %s: %s", method, url, exc or type(exc).__name__)
        request.app[_METRICS].backend_errors.inc()
        return None


def _response(status: int, body: bytes, headers: dict[str, list[str]]) -> web.Response:
    resp = web.Response(status=status, body=body)
    for name, values in headers.items():
        for v in values:
            resp.headers.add(name, v)
    return resp


def _candidates(request: web.Request) -> list[tuple[ClusterView, wreg.TransceiverRecord]]:
    view, locator = request.app[_VIEW], request.app[_LOCATOR]
    where, used = locator.locate(request)
    if not used and request.headers.get(locator.header):
        request.app[_METRICS].bad_location.inc()
    return placement(view, where, view.clock())


async def post_call(request: web.Request) -> web.Response:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    metrics = request.app[_METRICS]
    for n, (cluster, txr) in enumerate(_candidates(request)[:ATTEMPTS]):
        if n:
            metrics.overflows.inc()
        got = await _relay(request, "POST", txr.http.rstrip("/") + CALLS_PATH, body)
        if got is None:
            continue
        status, data, headers = got
        if status == 503 and "Retry-After" in headers:  # full or draining: the next one
            continue
        # a 429 is this client's own POST budget (transceiver/clientaddr.py): passed back as it
        # is, never spent again on the next transceiver
        if status == 201:
            location = (headers.pop("Location", [""]) or [""])[0]
            resource = location.rsplit("/", 1)[-1]
            if not location.startswith(CALLS_PATH + "/") or not _RESOURCE.fullmatch(resource):
                log.warning("transceiver %s/%s answered Location %r", txr.cluster, txr.id, location)
                metrics.backend_errors.inc()
                continue
            mine = f"{CALLS_PATH}/{txr.cluster}/{txr.id}/{resource}"
            headers["Location"] = [mine]
            headers["X-Edge-Cluster"] = [str(cluster.record.id)]
            headers["X-Edge-Region"] = [cluster.record.region]
            metrics.placed.labels(str(cluster.record.id)).inc()
        return _response(status, data, headers)  # a 4xx is the client's: never retried
    metrics.no_capacity.inc()
    return _text(503, "no cluster can take a call now: retry later", **{"Retry-After": RETRY_AFTER})


def _target(request: web.Request) -> str | web.Response:
    """The transceiver URL a front call URL names, or a 404."""
    m = request.match_info
    try:
        cluster, txr_id = int(m["cluster"]), int(m["txr"])
    except ValueError:
        return _text(404, "no such call")
    resource = m["resource"]
    if not (0 <= cluster <= 0xFFFF and 0 <= txr_id <= 0xFFFFFFFF) or not _RESOURCE.fullmatch(
        resource
    ):
        return _text(404, "no such call")
    txr = request.app[_VIEW].transceiver(cluster, txr_id)
    if txr is None:
        return _text(404, "no such call (its transceiver is gone)")
    return f"{txr.http.rstrip('/')}{CALLS_PATH}/{resource}"


async def call_method(request: web.Request) -> web.Response:
    """PATCH (ICE restart) or DELETE on a front call URL: to the call's transceiver."""
    target = _target(request)
    if isinstance(target, web.Response):
        return target
    body = None
    if request.method == "PATCH":
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
    got = await _relay(request, request.method, target, body)
    if got is None:
        return _text(502, "the call's transceiver did not answer")
    status, data, headers = got
    headers.pop("Location", None)
    return _response(status, data, headers)


async def to_nearest(request: web.Request) -> web.Response:
    """OPTIONS /v1/calls (TURN credentials) and POST /v1/tokens: the nearest transceiver's."""
    body = None
    if request.method == "POST":
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
    for _cluster, txr in _candidates(request)[:ATTEMPTS]:
        got = await _relay(request, request.method, txr.http.rstrip("/") + request.path, body)
        if got is not None:
            status, data, headers = got
            headers.pop("Location", None)
            return _response(status, data, headers)
    return _text(503, "no cluster can answer now: retry later", **{"Retry-After": RETRY_AFTER})


async def healthz(request: web.Request) -> web.Response:
    view = request.app[_VIEW]
    now = view.clock()
    fresh = sum(1 for c in view.clusters.values() if c.read_at and now - c.read_at <= STALE)
    wall = view.wall()
    reach = {  # which regions' new calls each cluster takes (docs/fleet.md)
        str(cid): sorted(r for r in c.reach if reaches(c, r, wall))
        for cid, c in sorted(view.clusters.items())
    }
    doc = {"status": "ok", "clusters": len(view.clusters), "fresh": fresh, "reach": reach}
    return web.json_response(doc)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[_METRICS].registry)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def make_front_app(
    view: FleetView,
    locator: Locator,
    front_metrics: FrontMetrics,
    trusted_proxies: Sequence[clientaddr.Network] = (),
) -> web.Application:
    """`trusted_proxies` (--trusted-proxy): the CDN or load balancers in front of the front,
    whose X-Forwarded-For chain is kept (see `_forward_headers`)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[_VIEW], app[_LOCATOR], app[_METRICS] = view, locator, front_metrics
    app[_TRUSTED] = tuple(trusted_proxies)
    view.read_failures = front_metrics.registry_failures

    async def http_session(app: web.Application) -> Any:
        timeout = aiohttp.ClientTimeout(total=BACKEND_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            app[_HTTP] = session
            yield

    async def refresher(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.to_thread(view.refresh)
                await asyncio.sleep(REFRESH)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    app.cleanup_ctx.extend([http_session, refresher])
    app.router.add_post(CALLS_PATH, post_call)
    app.router.add_route("OPTIONS", CALLS_PATH, to_nearest)
    app.router.add_post(TOKENS_PATH, to_nearest)
    resource = CALLS_PATH + "/{cluster}/{txr}/{resource}"
    app.router.add_patch(resource, call_method)
    app.router.add_delete(resource, call_method)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
