"""`transceiver serve`: run one transceiver until SIGTERM/SIGINT (then drain and exit)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

import click

from transceiver.config import Settings, parse_addr
from transceiver.keys import parse_key
from transceiver.service import ConfigError, Transceiver


def _addr(ctx: click.Context, param: click.Parameter, value: object) -> object:
    try:
        if isinstance(value, tuple):
            return [parse_addr(v) for v in value]
        return None if value is None else parse_addr(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _key(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    try:
        return None if value is None else parse_key(value)
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
    "--listen", default="127.0.0.1:8080", show_default=True, callback=_addr,
    help="HTTP HOST:PORT for signaling, /healthz, /metrics and the demo page.",
)  # fmt: skip
@click.option(
    "--udp", default="0.0.0.0:5000", show_default=True, callback=_addr,
    help="The one UDP socket every call uses (direct datagrams and relay tunnel datagrams).",
)  # fmt: skip
@click.option(
    "--cluster", default=1, type=click.IntRange(0, 0xFFFF), show_default=True,
    help="Cluster id minted into every routing ufrag.",
)  # fmt: skip
@click.option(
    "--id", "txr_id", default=1, type=TxrId(), show_default=True,
    help="This transceiver's id in its cluster (unique; relays route by cluster and id): a "
    "number, or an IPv4 address for its 32-bit value (a pod IP).",
)  # fmt: skip
@click.option(
    "--vip", multiple=True, callback=_addr, envvar="TXR_VIPS",
    help="A relay VIP ADDR:PORT to offer as the ICE candidate (repeatable; env TXR_VIPS, "
    "space separated); none: direct mode.",
)  # fmt: skip
@click.option("--advertise", help="Direct mode: the address clients reach the UDP socket at.")
@click.option(
    "--tunnel",
    help="ADDR:PORT relays send tunnel datagrams to, as registered [default: --advertise/--udp].",
)
@click.option(
    "--redis", "redis_url",
    help="Registry URL (e.g. redis://host:6379/0): register, refresh, read routing keys.",
)  # fmt: skip
@click.option("--redis-prefix", default="edge", show_default=True, help="Registry key prefix.")
@click.option(
    "--capacity", default=100, type=click.IntRange(0), show_default=True,
    help="Calls at once; more get 503.",
)  # fmt: skip
@click.option(
    "--drain-timeout", default=30.0, type=click.FloatRange(0), show_default=True,
    help="On SIGTERM: seconds to let running calls finish before exiting.",
)  # fmt: skip
@click.option("--key-id", type=click.IntRange(0, 15), help="Routing key id (with --key).")
@click.option(
    "--key", callback=_key,
    help="Routing key, 32 hex chars [default: from --redis; without either, a throwaway key].",
)  # fmt: skip
@click.option(
    "--relay-tunnel-port", default=6080, type=click.IntRange(1, 65535), show_default=True,
    help="The relays' tunnel port, where replies go (the same on every relay).",
)  # fmt: skip
@click.option(
    "--consent-timeout", default=30.0, type=click.FloatRange(0.5), show_default=True,
    help="End a call whose client sent no consent check for this long (RFC 7675).",
)  # fmt: skip
@click.option(
    "--setup-timeout", default=30.0, type=click.FloatRange(0.5), show_default=True,
    help="End a call that is not connected this long after its offer.",
)  # fmt: skip
@click.option(
    "--app", default="echo", show_default=True,
    help="The application: echo (Opus frames back), pcm-echo, or module:attr of your own.",
)  # fmt: skip
@click.option(
    "--media-path",
    default="fast",
    type=click.Choice(["fast", "aiortc"]),
    show_default=True,
    help="Opus apps: RTP handled in the socket mux (fast) or by aiortc's sender/receiver",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning"]),
)
def serve(log_level: str, txr_id: int, redis_url: str | None, **opts: object) -> None:
    """Serve calls: POST /v1/calls, DELETE /v1/calls/<id>, GET /healthz, GET /metrics, GET /.

    SIGTERM drains: new offers get 503, running calls go on until they end or --drain-timeout
    passes, then the process deregisters and exits. A second signal skips the wait.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if opts["key"] is not None and opts["key_id"] is None:
        raise click.UsageError("--key needs --key-id")
    settings = Settings(
        http=opts.pop("listen"),  # type: ignore[arg-type]
        udp=opts.pop("udp"),  # type: ignore[arg-type]
        vips=list(opts.pop("vip")),  # type: ignore[call-overload]
        txr_id=txr_id,
        redis_url=redis_url,
        **opts,  # type: ignore[arg-type]
    )
    try:
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


async def _serve(settings: Settings) -> None:
    txr = Transceiver(settings)
    await txr.start()
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
