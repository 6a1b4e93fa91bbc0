"""relayctl: load the XDP relay, keep its maps equal to the registry, show what it does."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from control import defaults
from control.errors import RelayctlError
from datapath import DatapathError
from wire.addr import format_addr_port, parse_addr_port
from wire.defaults import REDIS_PREFIX

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class AddrPort(click.ParamType):
    """ADDR:PORT, IPv4; with ipv6 also [IPV6]:PORT (VIPs)."""

    name = "ADDR:PORT"

    def __init__(self, ipv6: bool = False) -> None:
        self.ipv6 = ipv6
        if ipv6:
            self.name = "ADDR:PORT|[V6]:PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            what = param.opts[0] if param else "value"
            return parse_addr_port(value, what=what, ipv6=self.ipv6)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ADDR_PORT = AddrPort()
VIP_ADDR_PORT = AddrPort(ipv6=True)


class Cli(click.Group):
    """Prints expected failures as one line and never a traceback (RELAYCTL_DEBUG=1 shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (RelayctlError, DatapathError) as exc:
            click.echo(f"relayctl: error: {exc}", err=True)
            ctx.exit(1)
        except BrokenPipeError:  # `relayctl flows | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as exc:
            if os.environ.get("RELAYCTL_DEBUG"):
                raise
            click.echo(f"relayctl: internal error: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(3)


def name_option(f: Callable) -> Callable:
    return click.option(
        "--name",
        envvar="RELAYCTL_NAME",
        default=defaults.RELAY_NAME,
        show_default=True,
        help="Relay name: pins live under /sys/fs/bpf/NAME (env RELAYCTL_NAME).",
    )(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(f)


def redis_options(f: Callable) -> Callable:
    """--redis URL, or the URL/password from files or env: never a password on argv."""
    f = click.option(
        "--redis-password-file",
        metavar="PATH",
        envvar="REDIS_PASSWORD_FILE",
        help="Redis password (or ACL user's password) from this file (env REDIS_PASSWORD_FILE; "
        "or env REDIS_PASSWORD, user: REDIS_USERNAME).",
    )(f)
    f = click.option(
        "--redis-url-file",
        metavar="PATH",
        envvar="REDIS_URL_FILE",
        help="Read the Redis URL (it may hold user:password@) from this file (env REDIS_URL_FILE).",
    )(f)
    return click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        envvar="REDIS_URL",
        help="Registry: redis://host:port/db, rediss:// (TLS: env REDIS_CA_FILE, "
        "REDIS_CERT_FILE, REDIS_KEY_FILE) or unix:///path.sock (env REDIS_URL).",
    )(f)


def _redis_url(
    redis_url: str | None,
    url_file: str | None,
    password_file: str | None,
    *,
    required: bool = True,
) -> str | None:
    """The full URL from the redis options (and env), warnings printed; None if none given."""
    from urllib.parse import urlsplit

    from wire.redisconn import RedisConfigError, redact, resolve_url

    ctx = click.get_current_context()
    on_argv = ctx.get_parameter_source("redis_url") == click.core.ParameterSource.COMMANDLINE
    if redis_url and on_argv and urlsplit(redis_url).password:
        click.echo(
            f"relayctl: warning: --redis {redact(redis_url)}: a password on the command line is "
            "visible to every local user; use --redis-url-file or --redis-password-file",
            err=True,
        )
    try:
        url, warnings = resolve_url(redis_url, url_file=url_file, password_file=password_file)
    except RedisConfigError as exc:
        raise RelayctlError(str(exc)) from None
    for w in warnings:
        click.echo(f"relayctl: warning: {w}", err=True)
    if url is None and required:
        raise click.UsageError("give --redis URL, --redis-url-file PATH or env REDIS_URL")
    return url


def _privileged(what: str, name: str) -> None:
    from control.bpffs import check_name, ensure_bpffs, require_root

    check_name(name)
    require_root(what)
    ensure_bpffs()


def _maps(name: str) -> Any:
    from control.bpffs import pin_dir
    from datapath.maps import RelayMaps

    return RelayMaps(pin_dir(name))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(cls=Cli, context_settings=CONTEXT)
def main() -> None:
    """Control the XDP WebRTC edge relay: load it on an interface, sync its transceiver and key
    maps from the registry, and show its flows and counters.

    The program and its maps stay in the kernel after relayctl exits: they are pinned under
    /sys/fs/bpf/NAME. Inside a lab netns run relayctl with `nsenter --net=/run/netns/NS`.
    """


@main.command()
@name_option
@click.option(
    "--iface",
    "ifaces",
    multiple=True,
    required=True,
    help="Interface that receives client or tunnel traffic (repeat when they arrive on several).",
)
@click.option(
    "--vip",
    "vips",
    type=VIP_ADDR_PORT,
    multiple=True,
    required=True,
    help="A VIP address:port clients send to, IPv4 or [IPv6]:port (repeat for several, both "
    "families at once for dual stack; at most 64).",
)
@click.option(
    "--tunnel",
    type=ADDR_PORT,
    required=True,
    help="This relay's tunnel address:port (outer source; transceivers answer here).",
)
@click.option(
    "--mode",
    type=click.Choice(["native", "generic"]),
    default="native",
    show_default=True,
    help="XDP mode: driver (native) or generic (skb).",
)
@click.option(
    "--tunnel-iface",
    "tunnel_ifaces",
    multiple=True,
    help="An --iface that transceivers' tunnel datagrams arrive on (repeat, at most 4; "
    "default: every --iface). Tunnel datagrams on other links are dropped.",
)
@click.option(
    "--flow-idle",
    type=int,
    metavar="SECONDS",
    help="A flow with a client packet this recently is live: no Binding request moves it "
    "(1..3600; default 10).",
)
@click.option(
    "--ufrag-lifetime",
    type=int,
    metavar="SECONDS",
    help="New flows are refused for ufrags minted longer ago, rounded up to 5-minute epochs "
    "(300..614400; default 43200).",
)
@click.option(
    "--ufrag-flows",
    type=int,
    metavar="N",
    help="Flows one ufrag may create per --ufrag-window (1..1024; default 16).",
)
@click.option(
    "--ufrag-window",
    type=int,
    metavar="SECONDS",
    help="The window of --ufrag-flows (1..3600; default 60).",
)
def load(
    name: str,
    ifaces: tuple[str, ...],
    vips: tuple,
    tunnel: tuple[str, int],
    mode: str,
    tunnel_ifaces: tuple[str, ...],
    flow_idle: int | None,
    ufrag_lifetime: int | None,
    ufrag_flows: int | None,
    ufrag_window: int | None,
) -> None:
    """Compile and attach the relay, pin its maps, write config and VIPs.

    Loading again replaces the attached program in place: the pinned maps are reused, so flows,
    transceivers and keys survive. The VIP set is replaced exactly by the --vip options (the
    flows of a removed VIP are deleted). The limits not given fall back to the defaults.
    """
    from control import loader

    _privileged("load", name)
    limits = loader.LoadLimits(flow_idle, ufrag_lifetime, ufrag_flows, ufrag_window)
    r = loader.load(name, list(ifaces), list(vips), tunnel, mode, list(tunnel_ifaces), limits)
    replaced = f", replaced program {r.replaced}" if r.replaced else ""
    if r.also:
        replaced += f" (also on {', '.join(r.also)})"
    where = ", ".join(r.ifaces)
    click.echo(
        f"loaded relay {r.name!r} on {where} ({r.mode}): program {r.prog_id}{replaced}; "
        f"VIPs {', '.join(format_addr_port(a, p) for a, p in r.vips)}; "
        f"tunnel {r.tunnel[0]}:{r.tunnel[1]}"
    )


@main.command()
@name_option
@click.option(
    "--iface",
    help="Detach only from this interface (default: wherever attached); also detaches a relay "
    "program found there whose pins are gone.",
)
def unload(name: str, iface: str | None) -> None:
    """Detach the relay and remove its pins (flows and maps are freed)."""
    from control import loader

    _privileged("unload", name)
    r = loader.unload(name, iface)
    where = ", ".join(r.detached) or "no interface in this network namespace"
    if r.orphan:
        click.echo(f"detached a relay program whose pins were gone from {where}")
    elif r.still_attached:
        kept = ", ".join(r.still_attached)
        click.echo(f"detached relay {name!r} from {where}; pins kept: it still runs on {kept}")
    else:
        click.echo(f"unloaded relay {name!r}: detached from {where}; removed {len(r.removed)} pins")


@main.group("map", context_settings=CONTEXT)
def map_group() -> None:
    """The relay's maps: sync them from the registry, show them."""


def _read_registry(file: str | None, redis_url: str | None, prefix: str) -> tuple[Any, set[int]]:
    """The registry (with its remote clusters merged in), and the remote clusters whose
    registry could not be read."""
    from wire import registry

    if file:
        try:
            return registry.load_registry_file(file), set()
        except registry.RegistryError as exc:
            raise RelayctlError(str(exc)) from None
    import redis

    from wire.redisconn import connect, redact

    try:
        client = connect(redis_url, timeout=defaults.CLI_REDIS_TIMEOUT)
        try:
            reg = registry.read_registry(client, prefix=prefix)
        finally:
            client.close()
    except (redis.RedisError, ValueError) as exc:
        raise RelayctlError(
            f"cannot read the registry from {redact(redis_url or '')}: {exc}"
        ) from None
    # Remote clusters too, as `relayctl run` does: a one-shot sync must not take their
    # transceivers out of a map that `run` keeps them in.
    from control.fleet import RemoteClusters

    fleet = RemoteClusters(prefix)
    try:
        reg.problems.extend(fleet.merge(reg))
    finally:
        fleet.close()
    return reg, {cid for cid, st in fleet.status.items() if not st.up}


def _sync_once(
    name: str,
    file: str | None,
    redis_url: str | None,
    prefix: str,
    dry_run: bool,
    allow_empty: bool,
) -> tuple[list, list[str]]:
    from control import sync
    from datapath.maps import write_wall_clock

    reg, unread = _read_registry(file, redis_url, prefix)
    guard = None if allow_empty else sync.EmptyGuard(math.inf, "--allow-empty")
    with _maps(name) as maps:
        current = sync.read_state(maps)
        # A remote registry this one-shot could not read: keep its cluster's entries as loaded.
        for key, rec in sync.records_of(current).items():
            if key[0] in unread:
                reg.transceivers.setdefault(key, rec)
        outcome = sync.apply(maps, reg, dry_run=dry_run, guard=guard, current=current)
        if not dry_run:  # labs without `relayctl run` keep the ufrag epoch's clock fresh here
            write_wall_clock(maps)
    return outcome.changes, [f"skipped {p}" for p in reg.problems] + outcome.warnings


@map_group.command("sync")
@name_option
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Registry JSON file.")
@redis_options
@click.option("--prefix", default=REDIS_PREFIX, show_default=True, help="Redis key prefix.")
@click.option("--dry-run", is_flag=True, help="Show the changes without writing them.")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Let a registry without keys (or without transceivers) empty those maps.",
)
@click.option("--watch", is_flag=True, help="Keep syncing (Redis events, and every --interval).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=defaults.WATCH_INTERVAL,
    show_default=True,
    help="Seconds between syncs with --watch (registry entries expire silently).",
)
@json_option
def map_sync(
    name: str,
    file: str | None,
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    dry_run: bool,
    allow_empty: bool,
    watch: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Make the keys, clusters, transceivers and txr_addrs maps equal to the registry (with
    --redis: and to the registries of its remote cluster records, as `relayctl run` does).

    Prints one line per change: + added, ~ changed, - removed.
    """
    if not file:  # a REDIS_URL in the environment does not conflict with --file
        redis_url = _redis_url(redis_url, redis_url_file, redis_password_file, required=False)
    if bool(file) == bool(redis_url):
        raise click.UsageError("give exactly one of --file F or --redis URL")
    _privileged("map sync", name)
    if watch:  # a service manager stops us with SIGTERM: exit cleanly, not with a traceback
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            changes, problems = _sync_once(name, file, redis_url, prefix, dry_run, allow_empty)
        except RelayctlError as exc:
            if not watch:
                raise
            # A daemon outlives registry outages: report, wait, try again.
            click.echo(f"relayctl: error: {exc} (retrying)", err=True)
            time.sleep(interval)
            continue
        for p in problems:
            click.echo(f"relayctl: warning: {p}", err=True)
        if as_json:
            click.echo(json.dumps({"changes": [c.__dict__ for c in changes], "problems": problems}))
        elif changes or not watch:
            for c in changes:
                click.echo(str(c))
            verb = "would make" if dry_run else "made"
            click.echo(f"{verb} {len(changes)} changes" if changes else "maps already in sync")
        sys.stdout.flush()
        if not watch:
            return
        _wait_for_event(redis_url, prefix, interval)


def _wait_for_event(redis_url: str | None, prefix: str, interval: float) -> None:
    """Sleep until the next registry event or `interval` (file mode: just the interval)."""
    if redis_url is None:
        time.sleep(interval)
        return
    import redis

    from wire.redisconn import connect

    try:
        client = connect(redis_url, timeout=interval + 5)
        with client.pubsub() as sub:
            sub.subscribe(f"{prefix}:events")
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                msg = sub.get_message(timeout=left)
                if msg and msg["type"] == "message":
                    return
        client.close()
    except redis.RedisError as exc:
        click.echo(f"relayctl: warning: redis events: {exc}", err=True)
        time.sleep(interval)


@map_group.command("show")
@name_option
@json_option
def map_show(name: str, as_json: bool) -> None:
    """Show config, VIPs, keys (as fingerprints), transceivers and tunnel addresses."""
    from control import views

    _privileged("map show", name)
    with _maps(name) as maps:
        data = views.map_contents(maps)
    if as_json:
        _print_json(data)
        return
    click.echo(f"tunnel: {data['config']['tunnel']}")
    click.echo(f"VIPs: {', '.join(data['vips']) or '-'}")
    click.echo("keys: " + (", ".join(f"{k}={v}" for k, v in data["keys"].items()) or "-"))
    click.echo("clusters: " + (", ".join(f"{c} ({k})" for c, k in data["clusters"].items()) or "-"))
    rows = [(t["cluster"], t["id"], t["tunnel"]) for t in data["transceivers"]]
    click.echo(views.table(["CLUSTER", "ID", "TUNNEL"], rows))


@main.command()
@name_option
@json_option
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many flows.")
def flows(name: str, as_json: bool, limit: int | None) -> None:
    """List the learned flows (client -> VIP, and the transceiver they go to)."""
    from control import views

    _privileged("flows", name)
    with _maps(name) as maps:
        data = views.flows(maps, limit)
    if as_json:
        _print_json(data)
        return
    rows = [
        (f["client"], f["vip"], f["cluster"], f["transceiver"], f["tunnel"], f["age_s"])
        for f in data
    ]
    click.echo(views.table(["CLIENT", "VIP", "CLUSTER", "TXR", "TUNNEL", "AGE_S"], rows))
    click.echo(f"{len(data)} flows")


@main.command()
@name_option
@json_option
@click.option("--all", "show_all", is_flag=True, help="Also show reasons that counted nothing.")
def stats(name: str, as_json: bool, show_all: bool) -> None:
    """Packets and bytes per exit reason, summed over CPUs."""
    from control import views
    from control.reasons import VERDICT, Reason

    _privileged("stats", name)
    with _maps(name) as maps:
        data = views.stats(maps)
    if as_json:
        _print_json(data)
        return
    verdicts = {r.label: VERDICT.get(r, "") for r in Reason}
    rows = [
        (k, v["packets"], v["bytes"], verdicts.get(k, ""))
        for k, v in data.items()
        if show_all or v["packets"]
    ]
    click.echo(views.table(["REASON", "PACKETS", "BYTES", "VERDICT"], rows))


@main.group("ufrag", context_settings=CONTEXT)
def ufrag_group() -> None:
    """Routing ufrags: mint one, or decode one and check its tag."""


def key_file_option(f: Callable) -> Callable:
    return click.option(
        "--key-file",
        metavar="PATH",
        envvar="RELAYCTL_KEY_FILE",
        help="File holding the 16-byte key as 32 hex chars (env RELAYCTL_KEY_FILE; never on "
        "the command line).",
    )(f)


def _key_from_file(path: str) -> bytes:
    from wire import registry

    try:
        key, warnings = registry.read_key_file(path)
    except registry.RegistryError as exc:
        raise RelayctlError(f"--key-file: {exc}") from None
    for w in warnings:
        click.echo(f"relayctl: warning: {w}", err=True)
    return key


@ufrag_group.command("mint")
@name_option
@click.option("--key-id", type=click.IntRange(0, 15), required=True, help="Key slot 0..15.")
@key_file_option
@click.option("--cluster", type=click.IntRange(0, 0xFFFF), required=True)
@click.option("--transceiver", type=click.IntRange(0, 0xFFFFFFFF), required=True)
def ufrag_mint(
    name: str, key_id: int, key_file: str | None, cluster: int, transceiver: int
) -> None:
    """Print a fresh routing ufrag (this epoch, random 28-bit nonce); needs no loaded relay."""
    del name  # accepted like on every command; minting reads no maps
    from wire import ufrag

    if key_file is None:
        raise click.UsageError("give --key-file PATH (or env RELAYCTL_KEY_FILE)")
    click.echo(ufrag.mint(key_id, _key_from_file(key_file), cluster, transceiver))


@ufrag_group.command("decode")
@name_option
@click.argument("text", metavar="UFRAG")
@click.option("--key-id", type=click.IntRange(0, 15), help="Check the tag under this key id...")
@click.option(
    "--key-file",
    metavar="PATH",
    help="...and the key in this file, 32 hex chars (else: the loaded keys).",
)
@json_option
def ufrag_decode(
    name: str, text: str, key_id: int | None, key_file: str | None, as_json: bool
) -> None:
    """Show where UFRAG routes and whether its tag verifies.

    Exit status: 0 when it decodes and verifies (or no key is available), 1 otherwise.
    """
    from wire import ufrag

    text = text.split(":", 1)[0]  # accept a whole STUN USERNAME too
    if (key_id is None) != (key_file is None):
        raise click.UsageError("give --key-id and --key-file together")
    try:
        hint = ufrag.decode(text)
    except ufrag.UfragError as exc:
        raise RelayctlError(f"{exc.reason}: {exc}") from None
    info: dict[str, Any] = {
        "version": hint.version,
        "key_id": hint.key_id,
        "cluster": hint.cluster,
        "transceiver": hint.transceiver,
        "epoch": hint.epoch,
        "nonce": hint.nonce.hex(),
        "tag": hint.tag.hex(),
    }
    keys, source, tunnel = _decode_keys(name, hint, key_id, key_file)
    if keys is None:
        info["tag_ok"], info["verdict"] = None, f"not checked ({source})"
    else:
        try:
            ufrag.verify(text, keys)
            info["tag_ok"], info["verdict"] = True, f"tag verifies ({source})"
        except ufrag.UfragError as exc:
            info["tag_ok"], info["verdict"] = False, f"{exc.reason}: {exc} ({source})"
    if tunnel is not None:
        info["routes_to"] = tunnel
    if as_json:
        _print_json(info)
    else:
        for k, v in info.items():
            click.echo(f"{k}: {'-' if v is None else v}")
    if info["tag_ok"] is False:
        sys.exit(1)


def _decode_keys(
    name: str, hint: Any, key_id: int | None, key_file: str | None
) -> tuple[dict[int, bytes] | None, str, str | None]:
    """The keys to verify with, where they came from, and (if loaded) the transceiver's tunnel."""
    if key_file is not None and key_id is not None:
        return {key_id: _key_from_file(key_file)}, "--key-file", None
    from control.bpffs import check_name, pin_dir

    check_name(name)
    if os.geteuid() != 0 or not pin_dir(name).is_dir():
        return None, f"no --key-file given and no relay {name!r} loaded here", None
    from control.sync import read_state

    with _maps(name) as maps:
        state = read_state(maps)
    ep = state.transceivers.get((hint.cluster, hint.transceiver))
    tunnel = f"{ep[0]}:{ep[1]}" if ep else "unknown transceiver (not in the map)"
    return state.keys, f"keys loaded in relay {name!r}", tunnel


@main.command("run")
@name_option
@redis_options
@click.option("--prefix", default=REDIS_PREFIX, show_default=True, help="Redis key prefix.")
@click.option(
    "--flow-redis",
    metavar="URL",
    help="Write/read learned flows here instead of --redis (the same for every relay; "
    "password and TLS from the same files/env unless the URL has its own).",
)
@click.option(
    "--metrics",
    type=ADDR_PORT,
    metavar="ADDR:PORT",
    help="Serve Prometheus metrics on ADDR:PORT/metrics.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=defaults.INTERVAL,
    show_default=True,
    help="Seconds between passes (registry events wake it early).",
)
@click.option(
    "--flow-ttl",
    type=click.FloatRange(min=3),
    default=defaults.FLOW_TTL,
    show_default=True,
    help="TTL of the flow keys written to Redis, seconds.",
)
@click.option(
    "--flow-batch",
    type=click.IntRange(min=1),
    default=defaults.FLOW_BATCH,
    show_default=True,
    help="Flow-map entries read per pass.",
)
@click.option(
    "--slow-path/--no-slow-path",
    default=True,
    show_default=True,
    help="Take over flows learned by other relays (sockets on the VIPs).",
)
@click.option(
    "--slow-path-rate",
    type=click.FloatRange(min=1),
    default=defaults.SLOW_PATH_RATE,
    show_default=True,
    help="Slow-path datagrams per second at most.",
)
@click.option(
    "--slow-path-burst",
    type=click.FloatRange(min=1),
    help="Slow-path datagrams allowed at once (a failover moves many calls at once) "
    "[default: one second of --slow-path-rate].",
)
@click.option(
    "--slow-path-source-rate",
    type=click.FloatRange(min=1),
    default=defaults.SLOW_PATH_SOURCE_RATE,
    show_default=True,
    help="Slow-path datagrams per second from one source address (a flood from it "
    "cannot use up --slow-path-rate).",
)
@click.option(
    "--slow-path-net-rate",
    type=click.FloatRange(min=1),
    default=defaults.SLOW_PATH_NET_RATE,
    show_default=True,
    help="Slow-path datagrams per second from one source /24.",
)
@click.option(
    "--empty-grace",
    type=click.FloatRange(min=0),
    default=defaults.EMPTY_GRACE,
    show_default=True,
    help="Seconds an empty key or transceiver table must stay empty before the maps "
    "are emptied, and removals wait after Redis restarts (transceivers re-register first).",
)
@click.option(
    "--remote-grace",
    type=click.FloatRange(min=0),
    default=defaults.REMOTE_GRACE,
    show_default=True,
    help="Seconds a remote cluster's registry (a cluster record with --registry) may stay "
    "unreadable before its transceivers leave the map; until then its last view is kept.",
)
@click.option(
    "--region",
    envvar="RELAYCTL_REGION",
    help="This relay's region (1-32 of a-z, 0-9, '-', '_'): it reports, in every registry it "
    "reads, that its region reaches it, and the front places calls only where the client's "
    "region reaches (docs/fleet.md). Needs --lat and --lon. (env RELAYCTL_REGION) "
    "[default: no reports]",
)
@click.option(
    "--lat",
    envvar="RELAYCTL_LAT",
    type=click.FloatRange(-90, 90),
    help="The region's latitude, degrees (env RELAYCTL_LAT).",
)
@click.option(
    "--lon",
    envvar="RELAYCTL_LON",
    type=click.FloatRange(-180, 180),
    help="The region's longitude, degrees (env RELAYCTL_LON).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def run_command(
    name: str,
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    flow_redis: str | None,
    metrics: tuple[str, int] | None,
    interval: float,
    flow_ttl: float,
    flow_batch: int,
    slow_path: bool,
    slow_path_rate: float,
    slow_path_burst: float | None,
    slow_path_source_rate: float,
    slow_path_net_rate: float,
    empty_grace: float,
    remote_grace: float,
    region: str | None,
    lat: float | None,
    lon: float | None,
    verbose: bool,
) -> None:
    """Keep the relay's maps equal to the Redis registry, publish learned flows, take over
    flows of other relays (slow path) and export metrics. Runs until SIGTERM/SIGINT.

    Remote clusters (`relayctl clusters add ... --registry URL`) are followed too: their
    transceivers from their own registries, this relay registered there (docs/fleet.md).

    The relay must be loaded (`relayctl load`); its program and maps keep working without
    this process, which only adds changes, flow hand-over and metrics.
    """
    from control.controller import Controller, RunOptions
    from wire.redisconn import RedisConfigError, resolve_url

    url = _redis_url(redis_url, redis_url_file, redis_password_file)
    assert url is not None
    if flow_redis:
        try:
            flow_redis, _ = resolve_url(flow_redis, password_file=redis_password_file)
        except RedisConfigError as exc:
            raise RelayctlError(f"--flow-redis: {exc}") from None
    reach = _region(region, lat, lon)
    _privileged("run", name)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="relayctl run: %(levelname)s %(message)s",
    )
    opts = RunOptions(
        name=name,
        redis_url=url,
        prefix=prefix,
        flow_redis_url=flow_redis,
        interval=interval,
        flow_ttl=flow_ttl,
        flow_batch=flow_batch,
        metrics=metrics,
        slow_path=slow_path,
        rate=slow_path_rate,
        burst=slow_path_burst or slow_path_rate,
        source_rate=slow_path_source_rate,
        net_rate=slow_path_net_rate,
        empty_grace=empty_grace,
        remote_grace=remote_grace,
        region=reach,
    )
    try:
        controller = Controller(opts)
    except ValueError as exc:  # a malformed --redis URL
        raise RelayctlError(f"--redis: {exc}") from None

    def on_signal(signum: int, frame: Any) -> None:
        controller.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    controller.run()


# --- relayctl keys: routing keys in the registry (control/keys.py) ----------------------------


@main.group("keys", context_settings=CONTEXT)
def keys_group() -> None:
    """Routing keys in the Redis registry: add, list, promote, retire.

    Rotate without dropping a call: add (relays load it), wait until every relay holds it
    (`keys list`), promote (new calls mint with it), wait longer than your longest call, retire
    the old key (docs/operations.md).
    """


def _with_registry(
    redis_url: str | None, url_file: str | None, password_file: str | None, fn: Callable
) -> Any:
    """fn(client) against the registry; Redis errors (NOPERM too) as one clear line."""
    import redis

    from wire.redisconn import connect, redact

    url = _redis_url(redis_url, url_file, password_file)
    assert url is not None
    try:
        client = connect(url, timeout=defaults.CLI_REDIS_TIMEOUT)
        try:
            return fn(client)
        finally:
            client.close()
    except redis.exceptions.NoPermissionError as exc:
        raise RelayctlError(f"{redact(url)}: refused ({exc}): use the keys admin user") from None
    except (redis.RedisError, ValueError) as exc:
        raise RelayctlError(f"{redact(url)}: {exc}") from None


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"relayctl: warning: {w}", err=True)


def registry_command(group: click.Group, name: str) -> Callable:
    """A subcommand of `group` that works on the registry: the Redis options and --prefix."""

    def wrap(f: Callable) -> Callable:
        f = click.option(
            "--prefix", default=REDIS_PREFIX, show_default=True, help="Redis key prefix."
        )(f)
        return group.command(name)(redis_options(f))

    return wrap


def keys_command(name: str) -> Callable:
    return registry_command(keys_group, name)


@keys_command("add")
@click.option(
    "--key-id",
    type=click.IntRange(0, 15),
    help="Slot 0..15 [default: the lowest free one]; a taken slot is refused.",
)
@click.option(
    "--from-file",
    "key_file",
    metavar="PATH",
    help="Take the key from this file (32 hex chars) [default: 16 random bytes].",
)
@json_option
def keys_add(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    key_id: int | None,
    key_file: str | None,
    as_json: bool,
) -> None:
    """Add a routing key; relays load it on their next pass. Transceivers do not mint with it
    until it is promoted."""
    from control import keys
    from control.sync import key_fingerprint

    key = _key_from_file(key_file) if key_file else None
    kid, key = _with_registry(
        redis_url, redis_url_file, redis_password_file, lambda r: keys.add(r, prefix, key_id, key)
    )
    if as_json:
        _print_json({"key_id": kid, "fingerprint": key_fingerprint(key)})
    else:
        click.echo(f"added key {kid} ({key_fingerprint(key)}); promote it once every relay has it")


@keys_command("list")
@click.option("--show", is_flag=True, help="Also print the key bytes (hex): secrets on screen.")
@json_option
def keys_list(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    show: bool,
    as_json: bool,
) -> None:
    """List the keys: id, current, fingerprint, how many registered relays hold it."""
    from control import keys, views

    rows, problems = _with_registry(
        redis_url, redis_url_file, redis_password_file, lambda r: keys.list_keys(r, prefix)
    )
    _warn(problems)
    if as_json:
        _print_json([row.as_dict(show) for row in rows])
        return

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    head = ["ID", "CURRENT", "FINGERPRINT", "RELAYS", "ADDED", "CURRENT_UNTIL"]
    table = [
        [
            row.key_id,
            "*" if row.current else "",
            row.fingerprint,
            f"{row.relays_with}/{row.relays}",
            when(row.added),
            when(row.current_until),
        ]
        + ([row.hex] if show else [])
        for row in rows
    ]
    click.echo(views.table(head + (["KEY"] if show else []), table))


@keys_command("promote")
@click.argument("key_id", metavar="ID", type=click.IntRange(0, 15))
@click.option("--force", is_flag=True, help="Promote even if a registered relay lacks the key.")
def keys_promote(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    key_id: int,
    force: bool,
) -> None:
    """Make key ID current: transceivers mint new calls' ufrags with it. Refused while a
    registered relay does not hold it yet."""
    from control import keys

    _warn(
        _with_registry(
            redis_url,
            redis_url_file,
            redis_password_file,
            lambda r: keys.promote(r, prefix, key_id, force),
        )
    )
    click.echo(f"key {key_id} is current")


@keys_command("retire")
@click.argument("key_id", metavar="ID", type=click.IntRange(0, 15))
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=defaults.KEY_RETIRE_MIN_AGE,
    show_default=True,
    help="Seconds a key must have been non-current (longer than your longest call: every "
    "consent check of a call is routed by its ufrag).",
)
@click.option("--force", is_flag=True, help="Retire even if it was current within --min-age.")
def keys_retire(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    key_id: int,
    min_age: float,
    force: bool,
) -> None:
    """Remove key ID: relays drop it, ufrags minted with it stop routing. The current key is
    never retired."""
    from control import keys

    _warn(
        _with_registry(
            redis_url,
            redis_url_file,
            redis_password_file,
            lambda r: keys.retire(r, prefix, key_id, min_age, force),
        )
    )
    click.echo(f"retired key {key_id}")


# --- relayctl clusters: the fleet's cluster records (wire/registry.py, docs/fleet.md) ----------


@main.group("clusters", context_settings=CONTEXT)
def clusters_group() -> None:
    """Cluster records in the Redis registry: which clusters this registry's relays serve,
    where each is, and where its transceivers register.

    A record with --registry makes every relay of this registry follow that cluster's
    transceivers there and tunnel its calls straight to them over the backbone; the signaling
    front places calls at the nearest cluster that is not draining (docs/fleet.md).
    """


def _region(region: str | None, lat: float | None, lon: float | None) -> Any:
    """run's --region/--lat/--lon as the ReachReport it will send (its time set per report)."""
    from wire import registry

    if region is None:
        if lat is not None or lon is not None:
            raise RelayctlError("--lat/--lon without --region")
        return None
    if lat is None or lon is None:
        raise RelayctlError("--region needs --lat and --lon")
    try:
        return registry.ReachReport(region, lat, lon, 0.0)
    except registry.RegistryError as exc:
        raise RelayctlError(f"--region: {exc}") from None


def clusters_command(name: str) -> Callable:
    return registry_command(clusters_group, name)


@clusters_command("add")
@click.argument("cluster_id", metavar="ID", type=click.IntRange(0, 0xFFFF))
@click.option("--region", required=True, help="Region name: 1-32 of a-z, 0-9, '-', '_'.")
@click.option("--lat", type=click.FloatRange(-90, 90), required=True, help="Latitude, degrees.")
@click.option("--lon", type=click.FloatRange(-180, 180), required=True, help="Longitude, degrees.")
@click.option(
    "--registry",
    "cluster_registry",
    metavar="URL",
    default="",
    help="redis:// URL of the registry this cluster's transceivers register in [default: this "
    "one: a local cluster]. It is stored in the registry as given, password included.",
)
@click.option("--draining", is_flag=True, help="Take no new calls there (the front skips it).")
def clusters_add(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    cluster_id: int,
    region: str,
    lat: float,
    lon: float,
    cluster_registry: str,
    draining: bool,
) -> None:
    """Add or replace cluster ID's record; relays follow it on their next pass."""
    from wire import registry

    try:
        rec = registry.ClusterRecord(
            cluster_id, region, lat, lon, cluster_registry, draining, time.time()
        )
    except registry.RegistryError as exc:
        raise RelayctlError(str(exc)) from None
    _with_registry(
        redis_url,
        redis_url_file,
        redis_password_file,
        lambda r: registry.put_cluster(r, rec, prefix=prefix),
    )
    where = "remote, registry " + _redact(cluster_registry) if cluster_registry else "local"
    click.echo(f"cluster {cluster_id} ({region}, {where}){' draining' if draining else ''}")


@clusters_command("remove")
@click.argument("cluster_id", metavar="ID", type=click.IntRange(0, 0xFFFF))
def clusters_remove(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    cluster_id: int,
) -> None:
    """Remove cluster ID's record: relays stop following its registry (its transceivers leave
    their maps, its calls through them stop)."""
    from wire import registry

    existed = _with_registry(
        redis_url,
        redis_url_file,
        redis_password_file,
        lambda r: registry.remove_cluster(r, cluster_id, prefix=prefix),
    )
    if not existed:
        raise RelayctlError(f"no cluster {cluster_id} in the registry")
    click.echo(f"removed cluster {cluster_id}")


@clusters_command("list")
@json_option
def clusters_list(
    redis_url: str | None,
    redis_url_file: str | None,
    redis_password_file: str | None,
    prefix: str,
    as_json: bool,
) -> None:
    """List the cluster records (registry URLs without their passwords)."""
    from control import views
    from wire import registry

    clusters, problems = _with_registry(
        redis_url,
        redis_url_file,
        redis_password_file,
        lambda r: registry.read_clusters(r, prefix=prefix),
    )
    _warn(problems)
    rows = [
        {
            "id": c.id,
            "region": c.region,
            "lat": c.lat,
            "lon": c.lon,
            "registry": _redact(c.registry) if c.registry else "",
            "draining": c.draining,
        }
        for c in clusters.values()
    ]
    if as_json:
        _print_json(rows)
        return
    head = ["ID", "REGION", "LAT", "LON", "REGISTRY", "DRAINING"]
    table = [
        [r["id"], r["region"], r["lat"], r["lon"], r["registry"] or "(local)", r["draining"]]
        for r in rows
    ]
    click.echo(views.table(head, table))


def _redact(url: str) -> str:
    from wire.redisconn import redact

    return redact(url)
