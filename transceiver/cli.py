"""`transceiver serve`: run one transceiver until SIGTERM/SIGINT (then drain and exit)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

import click

from transceiver import auth, clientaddr, defaults, limits, turn
from transceiver.aiortc_seam import SeamError
from transceiver.config import Settings
from transceiver.heap import freeze_startup_heap
from transceiver.relays import parse_relays
from transceiver.service import ConfigError, TransceiverService
from wire.addr import parse_addr_port


def _text(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _bind_addr(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    """An address we listen on: ':5000' is 0.0.0.0:5000, port 0 any free port."""
    try:
        return parse_addr_port(value, what=param.opts[0], bind=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _vips(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list:
    try:
        return [parse_addr_port(v, what="--vip", ipv6=True) for v in value]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _tunnel(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _text(parse_addr_port(value, what="--tunnel"))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _ipv4(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else str(ipaddress.IPv4Address(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IPv4 address") from None


def _trusted_proxies(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[clientaddr.Network]:
    try:
        return list(clientaddr.networks(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _trusted_proxy_option(help: str) -> object:
    return click.option(
        "--trusted-proxy",
        "trusted_proxies",
        metavar="CIDR",
        multiple=True,
        callback=_trusted_proxies,
        help=help + " (repeatable) [default: none].",
    )


def _key_file(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    """The routing key from a file (never on the command line: /proc/PID/cmdline is public)."""
    from wire.registry import RegistryError, read_key_file

    if value is None:
        return None
    try:
        key, warnings = read_key_file(value)
    except RegistryError as exc:
        raise click.BadParameter(str(exc)) from None
    for w in warnings:
        click.echo(f"transceiver: warning: {w}", err=True)
    return key


def _redis(url: str | None, url_file: str | None, password_file: str | None) -> str | None:
    """The full registry URL (password and TLS from files/env: wire/redisconn.py)."""
    from wire.redisconn import RedisConfigError, resolve_url

    try:
        full, warnings = resolve_url(url, url_file=url_file, password_file=password_file)
    except RedisConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--redis'") from None
    for w in warnings:
        click.echo(f"transceiver: warning: {w}", err=True)
    return full


def _turn_urls(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    try:
        return [turn.parse_url(u) for v in value for u in v.split()]
    except turn.TurnConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _relays(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    try:
        return [ip for v in value for ip in parse_relays(v)]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class TxrId(click.ParamType):
    """0..2^32-1, or an IPv4 address meaning its 32-bit value: `--id=$(POD_IP)` gives every pod
    of a Deployment an id no other running pod has (docs/kubernetes.md)."""

    name = "ID|IPV4"

    def convert(self, value: object, param: click.Parameter | None, ctx: object) -> int:
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            try:
                number = int(ipaddress.IPv4Address(text)) if "." in text else int(text)
            except ValueError:
                self.fail(f"{text!r} is neither a number nor an IPv4 address", param)
        if not 0 <= number <= 0xFFFFFFFF:
            self.fail(f"{number} is not in 0..4294967295", param)
        return number


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """WebRTC transceiver of the edge: ICE-lite, DTLS and SRTP for many calls on one UDP socket,
    reached directly or through XDP relays; signaling over HTTP (WHIP-style)."""


@main.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=_text(defaults.HTTP_LISTEN),
    show_default=True,
    callback=_bind_addr,
    help="HTTP HOST:PORT for signaling, /healthz, /metrics and the demo page.",
)
@click.option(
    "--udp",
    metavar="HOST:PORT",
    default=_text(defaults.UDP_LISTEN),
    show_default=True,
    callback=_bind_addr,
    help="The one UDP socket every call uses (direct datagrams and relay tunnel datagrams).",
)
@click.option(
    "--cluster",
    default=defaults.CLUSTER,
    type=click.IntRange(0, 0xFFFF),
    show_default=True,
    help="Cluster id minted into every routing ufrag.",
)
@click.option(
    "--id",
    "txr_id",
    default=defaults.TXR_ID,
    type=TxrId(),
    show_default=True,
    help="This transceiver's id in its cluster (unique; relays route by cluster and id): a "
    "number, or an IPv4 address for its 32-bit value (a pod IP).",
)
@click.option(
    "--vip",
    metavar="ADDR:PORT",
    multiple=True,
    callback=_vips,
    envvar="TXR_VIPS",
    help="A relay VIP ADDR:PORT or [IPV6]:PORT to offer as an ICE candidate (repeatable, "
    "both families for dual stack; env TXR_VIPS, space separated); none: direct mode.",
)
@click.option(
    "--advertise",
    metavar="ADDR",
    callback=_ipv4,
    help="Direct mode: the IPv4 address clients reach the UDP socket at.",
)
@click.option(
    "--advertise-http",
    metavar="URL",
    default="",
    envvar="TXR_ADVERTISE_HTTP",
    help="The http(s)://HOST:PORT a fleet's signaling front reaches this API at, published in "
    "the registry (env TXR_ADVERTISE_HTTP) [default: none: no front places calls here].",
)
@click.option(
    "--tunnel",
    metavar="ADDR:PORT",
    callback=_tunnel,
    help="ADDR:PORT relays send tunnel datagrams to, as registered [default: --advertise/--udp].",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    envvar="REDIS_URL",
    help="Registry URL (redis://host:6379/0, rediss:// for TLS, unix:///path): register, "
    "refresh, read routing keys (env REDIS_URL; TLS files: env REDIS_CA_FILE, REDIS_CERT_FILE, "
    "REDIS_KEY_FILE).",
)
@click.option(
    "--redis-url-file",
    metavar="PATH",
    envvar="REDIS_URL_FILE",
    help="Read the registry URL (it may hold user:password@) from this file (env REDIS_URL_FILE).",
)
@click.option(
    "--redis-password-file",
    metavar="PATH",
    envvar="REDIS_PASSWORD_FILE",
    help="The Redis (ACL user's) password from this file (env REDIS_PASSWORD_FILE; or env "
    "REDIS_PASSWORD, user: REDIS_USERNAME).",
)
@click.option(
    "--redis-prefix", default=defaults.REDIS_PREFIX, show_default=True, help="Registry key prefix."
)
@click.option("--key-id", type=click.IntRange(0, 15), help="Routing key id (with --key-file).")
@click.option(
    "--key-file",
    "key",
    metavar="PATH",
    envvar="TXR_KEY_FILE",
    callback=_key_file,
    help="Routing key from this file, 32 hex chars (env TXR_KEY_FILE) [default: from --redis; "
    "without either, a throwaway key].",
)
@click.option(
    "--capacity",
    default=defaults.CAPACITY,
    type=click.IntRange(0),
    show_default=True,
    help="Calls at once; more get 503.",
)
@click.option(
    "--drain-timeout",
    default=defaults.DRAIN_TIMEOUT,
    type=click.FloatRange(0),
    show_default=True,
    help="On SIGTERM: seconds to let running calls finish before exiting.",
)
@click.option(
    "--relay-tunnel-port",
    default=defaults.RELAY_TUNNEL_PORT,
    type=click.IntRange(1, 65535),
    show_default=True,
    help="The relays' tunnel port, where replies go (the same on every relay).",
)
@click.option(
    "--consent-timeout",
    default=defaults.CONSENT_TIMEOUT,
    type=click.FloatRange(0.5),
    show_default=True,
    help="End a call whose client sent no consent check for this long (RFC 7675).",
)
@click.option(
    "--setup-timeout",
    default=defaults.SETUP_TIMEOUT,
    type=click.FloatRange(0.5),
    show_default=True,
    help="End a call that got no authenticated ICE check this long after its answer.",
)
@click.option(
    "--rtcp-interval",
    default=defaults.RTCP_INTERVAL,
    type=click.FloatRange(0.5, 60),
    show_default=True,
    help="Mean seconds between a call's RTCP reports (randomised x0.5-1.5, RFC 3550).",
)
@click.option(
    "--app",
    metavar="APP",
    default=defaults.APP,
    show_default=True,
    help="The application: echo (Opus frames back), pcm-echo, greet-echo (speaks first, then "
    "echo), or module:attr of your own.",
)
@click.option(
    "--gc-freeze/--no-gc-freeze",
    default=True,
    show_default=True,
    help="Freeze the heap after start-up so garbage collections walk only the calls' objects "
    "(a full collection otherwise stops every call's media ~0.1 s: transceiver/heap.py).",
)
@click.option(
    "--media-path",
    default=defaults.MEDIA_PATH,
    type=click.Choice(["fast", "aiortc"]),
    show_default=True,
    help="Opus apps: RTP handled in the socket mux (fast) or by aiortc's sender/receiver.",
)
# --- txr8: which relays may send tunnel datagrams (transceiver/relays.py) ---
@click.option(
    "--relay",
    "relays",
    metavar="IP[,IP]",
    multiple=True,
    callback=_relays,
    envvar="TXR_RELAYS",
    help="Relay tunnel source address(es) to take tunnel datagrams from, besides the relays "
    "registered in --redis (repeatable or comma separated; env TXR_RELAYS). Tunnel datagrams "
    "from any other source are dropped and counted.",
)
# --- end txr8 ---
# --- signaling: credentials and limits (transceiver/auth.py, transceiver/limits.py) ---------
@click.option(
    "--api-keys",
    metavar="FILE",
    envvar=auth.ENV_KEYS_FILE,
    type=click.Path(dir_okay=False),
    help="API keys for POST /v1/calls and /v1/tokens, one a line, # comments (env "
    f"{auth.ENV_KEYS_FILE}); never a key on the command line.",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Anyone who reaches --listen may place calls: local development only (logged loudly).",
)
@click.option(
    "--token-ttl",
    default=auth.DEFAULT_TOKEN_TTL,
    type=click.FloatRange(1, auth.MAX_TOKEN_TTL),
    show_default=True,
    help="Lifetime of a client token from POST /v1/tokens (seconds; single use).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    help=f"HTTP connections at once [default: {limits.MAX_CONNECTIONS}, and "
    f"{limits.FD_RESERVE} below RLIMIT_NOFILE].",
)
@click.option(
    "--header-timeout",
    default=limits.HEADER_TIMEOUT,
    type=click.FloatRange(0.1),
    show_default=True,
    help="Close a connection that has sent no complete request head for this long (seconds).",
)
@click.option(
    "--body-timeout",
    default=limits.BODY_TIMEOUT,
    type=click.FloatRange(0.1),
    show_default=True,
    help="Answer 408 to a POST whose body takes longer than this (seconds).",
)
@click.option(
    "--post-rate",
    default=limits.POST_RATE,
    type=click.FloatRange(0),
    show_default=True,
    help="POSTs a second per client address (0: unlimited); beyond it 429.",
)
@click.option(
    "--post-burst",
    default=limits.POST_BURST,
    type=click.IntRange(1),
    show_default=True,
    help="POSTs per client address at once, before --post-rate applies.",
)
@_trusted_proxy_option(  # type: ignore[operator]
    "A proxy in front (the fleet's signaling front, a load balancer) whose X-Forwarded-For "
    "names the client, so that the POST budget is per client, not per proxy: only from a peer "
    "in one of these CIDRs is the header read, from the right, skipping entries that are "
    "themselves trusted proxies; a malformed one keys the request on the peer; anyone else's "
    "is ignored. Without it every request is keyed on its TCP peer"
)
# --- TURN for clients without UDP (transceiver/turn.py) -------------------------------------
@click.option(
    "--turn-url",
    "turn_urls",
    metavar="URL",
    multiple=True,
    callback=_turn_urls,
    envvar="TXR_TURN_URLS",
    help="A TURN server to announce to clients (Link rel=ice-server on OPTIONS and POST "
    "/v1/calls), e.g. turns:turn.example.net:443?transport=tcp (repeatable; env TXR_TURN_URLS, "
    "space separated).",
)
@click.option(
    "--turn-secret-file",
    metavar="PATH",
    envvar=turn.ENV_SECRET_FILE,
    type=click.Path(dir_okay=False),
    help="The secret shared with the TURN server (coturn static-auth-secret), from this file "
    f"(env {turn.ENV_SECRET_FILE}, or the secret itself in env {turn.ENV_SECRET}); never on "
    "the command line.",
)
@click.option(
    "--turn-ttl",
    default=turn.DEFAULT_TTL,
    type=click.FloatRange(turn.MIN_TTL, turn.MAX_TTL),
    show_default=True,
    help="Lifetime of a minted TURN credential (seconds): how long a client may open new TURN "
    "allocations with it (an ICE restart opens one); an allocation made in time outlives it.",
)
# --- end of signaling options ------------------------------------------------------------------
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning"]),
    help="How much to log (stderr).",
)
def serve(log_level: str, txr_id: int, redis_url: str | None, **opts: object) -> None:
    """Serve calls: OPTIONS and POST /v1/calls, POST /v1/tokens, DELETE /v1/calls/<id>,
    GET /healthz, GET /readyz, GET /metrics, GET /. POSTs need an API key (--api-keys) or a
    client token; OPTIONS hands out TURN credentials (--turn-url) to the same callers.

    SIGTERM drains: new offers get 503, running calls go on until they end or --drain-timeout
    passes, then the process deregisters and exits. A second signal skips the wait.
    """
    # No input, and no accept-retry loop, floods the log: the process's one handler collapses
    # repeats (a root logger someone else configured, e.g. under a test runner, is left alone).
    handler = logging.StreamHandler()
    handler.addFilter(limits.RepeatFilter())
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        handlers=[handler],
    )
    if opts["key"] is not None and opts["key_id"] is None:
        raise click.UsageError("--key-file needs --key-id")
    gc_freeze = bool(opts.pop("gc_freeze"))
    turn_secret_file = opts.pop("turn_secret_file")
    turn_secret = None
    if opts["turn_urls"]:
        try:
            turn_secret = turn.read_secret(turn_secret_file)  # type: ignore[arg-type]
        except turn.TurnConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--turn-secret-file'") from None
    url_file, password_file = opts.pop("redis_url_file"), opts.pop("redis_password_file")
    redis_url = _redis(redis_url, url_file, password_file)  # type: ignore[arg-type]
    settings = Settings(
        http=opts.pop("listen"),  # type: ignore[arg-type]
        udp=opts.pop("udp"),  # type: ignore[arg-type]
        vips=list(opts.pop("vip")),  # type: ignore[call-overload]
        txr_id=txr_id,
        redis_url=redis_url,
        turn_secret=turn_secret,
        **opts,  # type: ignore[arg-type]
    )
    try:
        asyncio.run(_serve(settings, gc_freeze))
    except (ConfigError, SeamError) as exc:
        raise click.ClickException(str(exc)) from None


async def _serve(settings: Settings, gc_freeze: bool) -> None:
    txr = TransceiverService(settings)
    await txr.start()
    if gc_freeze:
        logging.getLogger("transceiver").info("heap frozen: %d objects", freeze_startup_heap())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"transceiver ready http={txr.http_url} udp={txr.udp_addr[0]}:{txr.udp_addr[1]}")
    await stop.wait()
    stop.clear()
    drain = asyncio.ensure_future(txr.drain())
    # A second signal skips the rest of the drain.
    second = asyncio.ensure_future(stop.wait())
    await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
    drain.cancel()
    second.cancel()
    await txr.stop()
    click.echo("transceiver stopped")


@main.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=_text(defaults.HTTP_LISTEN),
    show_default=True,
    callback=_bind_addr,
    help="HTTP HOST:PORT clients POST their offers to.",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    envvar="REDIS_URL",
    required=True,
    help="The fleet registry: the Redis holding the cluster records (`relayctl clusters`); "
    "each cluster's transceivers are read from the registry its record names (env REDIS_URL).",
)
@click.option(
    "--redis-url-file", metavar="PATH", envvar="REDIS_URL_FILE", help="Read --redis from a file."
)
@click.option(
    "--redis-password-file",
    metavar="PATH",
    envvar="REDIS_PASSWORD_FILE",
    help="The Redis (ACL user's) password from this file (env REDIS_PASSWORD_FILE).",
)
@click.option(
    "--redis-prefix", default=defaults.REDIS_PREFIX, show_default=True, help="Registry key prefix."
)
@click.option(
    "--location-header",
    default="X-Edge-Location",
    show_default=True,
    help="Request header with the client's location: \"LAT,LON\" or a cluster record's region "
    "name, set by the CDN or load balancer in front (never trusted for more than placement).",
)
@click.option(
    "--default-region",
    default="",
    help="Where a request without a usable location is placed [default: the freest cluster].",
)
@_trusted_proxy_option(  # type: ignore[operator]
    "A CDN or load balancer in front of the front: from a peer in one of these CIDRs the "
    "X-Forwarded-For it sends is kept and the peer appended to it; from anyone else the "
    "transceiver gets X-Forwarded-For with the peer's address alone (a client's own is dropped)"
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def front(
    listen: tuple[str, int],
    redis_url: str,
    redis_url_file: str | None,
    redis_password_file: str | None,
    redis_prefix: str,
    location_header: str,
    default_region: str,
    trusted_proxies: list[clientaddr.Network],
    log_level: str,
) -> None:
    """The fleet's signaling front: clients POST here; each call goes to the nearest cluster
    that is not draining and has room (full: the next nearest), PATCH/DELETE follow it to its
    transceiver. GET /healthz, GET /metrics (docs/front.md)."""
    from aiohttp import web

    from transceiver.front import FleetView, FrontMetrics, Locator, make_front_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    url = _redis(redis_url, redis_url_file, redis_password_file)
    assert url is not None
    try:
        view = FleetView(url, prefix=redis_prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--redis'") from None
    app = make_front_app(
        view,
        Locator(view, location_header, default_region),
        FrontMetrics(),
        trusted_proxies=trusted_proxies,
    )
    try:
        web.run_app(app, host=listen[0], port=listen[1], access_log=None, print=None)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen[0]}:{listen[1]}: {exc}") from None
    finally:
        view.close()
