"""One call from headless Chromium (the transceiver's demo page), run inside a client netns.

    python -m lab.browsercall [--api-keys FILE] [--relay-only] [--no-ice-servers]
        [--chromium-arg ARG ...] [--header "NAME: VALUE" ...] [--serve-page] [--gaps] [--timeout S]
        http://198.18.2.2:8080 [packets]

Loads the page the transceiver serves, clicks Call (fake microphone), waits until `packets`
echoed audio packets came back, reads the call's state and hangs up. Prints one JSON line:
{"state", "packets", "energy", "setup_ms", "error"}; exits 1 if the call did not connect.
The page is served over plain http from a lab address, so Chromium is told to treat that origin
as secure (getUserMedia needs a secure context). With an API keys file (--api-keys, or env
TXR_API_KEYS_FILE) the page gets a fresh single-use client token for each call from
`window.getEdgeToken()`, minted here with the file's first key, as an application server would
mint one for its page (the key itself never reaches the browser).

The page asks `OPTIONS /v1/calls` for its ICE servers (TURN, with short-lived credentials) before
it gathers; `--relay-only` makes Chromium use TURN relay candidates alone (iceTransportPolicy
"relay"), `--no-ice-servers` makes it ignore what OPTIONS announced (a control: no TURN at all).
The JSON line then also has "pair" (the selected candidate pair: local/remote type, protocol,
relayProtocol, RTT), "steady_rtt_ms" and "steady_checks" (the mean STUN round trip of the pair's
checks after the first 10 echoed packets, and how many), "gather_ms" and "ice_servers" (the
URLs, without credentials); with `--restart-ice`, "restart" ({ufrag, ms}) and
"packets_after_restart"; and "call_url" (the call's URL, the POST's Location).

Through the fleet's front (`transceiver front`, docs/front.md): `--header "NAME: VALUE"`
(repeatable) goes on every request the page makes and on the token POST, e.g. the location header
a CDN in front would set ("X-Edge-Location: LAT,LON"); the front serves no page, so
`--serve-page` serves the transceiver's demo page (transceiver/static/index.html) at the URL's
origin from here (Playwright routing), as the application's own web server would: the page's
requests (/v1/calls, its call URL) then all go to the front.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def mint_token(url: str, api_key: str, headers: dict[str, str] | None = None) -> str:
    """POST /v1/tokens with an API key: what the application server does for its page."""
    req = urllib.request.Request(
        f"{url}/v1/tokens",
        method="POST",
        headers={**(headers or {}), "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["value"])


def parse_header(value: str) -> tuple[str, str]:
    """A --header value, NAME: VALUE, as (NAME, VALUE) (as lab.callclient takes it)."""
    name, sep, rest = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"not NAME: VALUE: {value!r}")
    return name.strip(), rest.strip()


@contextmanager
def chromium_page(
    url: str,
    api_key: str | None = None,
    extra_args: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    serve_page: bool = False,
) -> Iterator[Any]:
    """A page of headless Chromium on `url`'s origin (treated as secure) with a fresh profile;
    with `api_key` the page's `window.getEdgeToken()` mints a client token for each call;
    `extra_args` are more Chromium flags (a lab's TURN certificate pin); `headers` go on every
    request (and the token POST); `serve_page`: the demo page is served from here at `url`/."""
    from playwright.sync_api import sync_playwright

    args = [*ARGS, f"--unsafely-treat-insecure-origin-as-secure={url}", *extra_args]
    with tempfile.TemporaryDirectory(prefix="edge-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            extra_http_headers=headers or None,
        )
        try:
            if api_key:
                ctx.expose_function("getEdgeToken", lambda: mint_token(url, api_key, headers))
            if serve_page:
                from transceiver.server import STATIC_DIR  # the page `transceiver serve` serves

                page_html = (STATIC_DIR / "index.html").read_bytes()
                ctx.route(
                    f"{url}/",
                    lambda route: route.fulfill(body=page_html, content_type="text/html"),
                )
            page = ctx.new_page()
            page.goto(f"{url}/")
            yield page
        finally:
            ctx.close()


def call(
    url: str,
    packets: int,
    api_key: str | None = None,
    *,
    relay_only: bool = False,
    no_ice_servers: bool = False,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
    restart_ice: bool = False,
    headers: dict[str, str] | None = None,
    serve_page: bool = False,
    watch_gaps: bool = False,
) -> dict[str, Any]:
    with chromium_page(url, api_key, extra_args, headers, serve_page) as page:
        if relay_only:
            page.evaluate("window.edgeIcePolicy = 'relay'")
        if no_ice_servers:
            page.evaluate("window.edgeIceServers = []")
        if watch_gaps:
            page.evaluate("window.watchGaps()")
        page.click("#call")
        # The pair's STUN round trips once audio flows, so that the RTT of the checks after it
        # (steady_rtt_ms) leaves out the first ones, which run while ICE and DTLS start.
        early = min(packets, 10)
        page.wait_for_function(
            f"window.packetsReceived > {early} || window.callState === 'failed'",
            timeout=timeout * 1000,
        )
        first = page.evaluate("window.selectedPair()")
        page.wait_for_function(
            f"window.packetsReceived > {packets} || window.callState === 'failed'",
            timeout=timeout * 1000,
        )
        result = dict(
            page.evaluate(
                "({state: window.callState, error: window.callError,"
                " packets: window.packetsReceived, energy: window.inboundAudioEnergy,"
                " sent: window.packetsSent, lost: window.packetsLost,"
                " max_gap_ms: window.edgeGap ? window.edgeGap.max : null,"
                " setup_ms: window.setupMs, gather_ms: window.gatherMs, call_url: window.callUrl,"
                " ice_servers: window.iceServers.map((s) => s.urls)})"
            )
        )
        if restart_ice and result["state"] == "connected":
            # window.restartIce() (PATCH), then as many echoed packets again on the new session
            result["restart"] = page.evaluate("window.restartIce()")
            page.wait_for_function(
                f"window.packetsReceived > {result['packets'] + packets}"
                " || window.callState === 'failed'",
                timeout=timeout * 1000,
            )
            after = page.evaluate("({state: window.callState, packets: window.packetsReceived})")
            result["state"], result["packets_after_restart"] = after["state"], after["packets"]
        result["pair"] = pair = page.evaluate("window.selectedPair()")
        result["steady_rtt_ms"], result["steady_checks"] = None, 0
        if (
            first
            and pair
            and pair.get("totalRtt") is not None
            and first.get("totalRtt") is not None
        ):
            answered = pair["responses"] - first["responses"]
            if answered > 0:
                result["steady_rtt_ms"] = 1000 * (pair["totalRtt"] - first["totalRtt"]) / answered
                result["steady_checks"] = answered
        if result["state"] == "failed":  # the page has torn the call down already
            return result
        page.click("#hangup")
        page.wait_for_function(
            "window.callState === 'ended' || window.callState === 'failed'", timeout=10_000
        )
        return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.browsercall",
        description="One call from headless Chromium through the transceiver's demo page; "
        "prints one JSON line, exits 1 if the call did not connect.",
    )
    parser.add_argument("url", help="the transceiver's base URL, e.g. http://198.18.2.2:8080")
    parser.add_argument(
        "packets", nargs="?", type=int, default=50, help="echoed packets to wait for"
    )
    parser.add_argument(
        "--api-keys",
        metavar="FILE",
        default=os.environ.get("TXR_API_KEYS_FILE"),
        help="mint client tokens with this file's first key (env TXR_API_KEYS_FILE)",
    )
    parser.add_argument("--relay-only", action="store_true", help="TURN relay candidates only")
    parser.add_argument(
        "--no-ice-servers", action="store_true", help="ignore the ICE servers OPTIONS announces"
    )
    parser.add_argument(
        "--chromium-arg", action="append", default=[], metavar="ARG", help="one more Chromium flag"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the echo (default 30)"
    )
    parser.add_argument(
        "--restart-ice",
        action="store_true",
        help="then restart ICE (window.restartIce(), a PATCH) and wait for as many echoes again",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        type=parse_header,
        metavar='"NAME: VALUE"',
        help="one more request header on every request of the page (and the token POST)",
    )
    parser.add_argument(
        "--gaps",
        action="store_true",
        help="time the longest gap between received audio packets (max_gap_ms; a 10 ms timer "
        "in the page)",
    )
    parser.add_argument(
        "--serve-page",
        action="store_true",
        help="serve the demo page at URL/ from here (URL serves none: the fleet's front)",
    )
    args = parser.parse_args(argv)
    try:
        from lab.peer import read_api_key

        key = read_api_key(args.api_keys)
        result = call(
            args.url,
            args.packets,
            key,
            relay_only=args.relay_only,
            no_ice_servers=args.no_ice_servers,
            extra_args=tuple(args.chromium_arg),
            timeout=args.timeout,
            restart_ice=args.restart_ice,
            headers=dict(args.header),
            serve_page=args.serve_page,
            watch_gaps=args.gaps,
        )
    except Exception as exc:  # one line for the caller, no traceback
        result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result.get("state") == "connected" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
