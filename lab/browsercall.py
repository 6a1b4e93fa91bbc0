"""One call from headless Chromium (the transceiver's demo page), run inside a client netns.

    python -m lab.browsercall [--api-keys FILE] http://198.18.2.2:8080 [packets]

Loads the page the transceiver serves, clicks Call (fake microphone), waits until `packets`
echoed audio packets came back, reads the call's state and hangs up. Prints one JSON line:
{"state", "packets", "energy", "setup_ms", "error"}; exits 1 if the call did not connect.
The page is served over plain http from a lab address, so Chromium is told to treat that origin
as secure (getUserMedia needs a secure context). With an API keys file (--api-keys, or env
TXR_API_KEYS_FILE) the page gets a fresh single-use client token for each call from
`window.getEdgeToken()`, minted here with the file's first key, as an application server would
mint one for its page (the key itself never reaches the browser).
"""

from __future__ import annotations

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


def mint_token(url: str, api_key: str) -> str:
    """POST /v1/tokens with an API key: what the application server does for its page."""
    req = urllib.request.Request(
        f"{url}/v1/tokens", method="POST", headers={"Authorization": f"Bearer {api_key}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["value"])


@contextmanager
def chromium_page(url: str, api_key: str | None = None) -> Iterator[Any]:
    """A page of headless Chromium on `url`'s origin (treated as secure) with a fresh profile;
    with `api_key` the page's `window.getEdgeToken()` mints a client token for each call."""
    from playwright.sync_api import sync_playwright

    args = [*ARGS, f"--unsafely-treat-insecure-origin-as-secure={url}"]
    with tempfile.TemporaryDirectory(prefix="edge-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=args
        )
        try:
            if api_key:
                ctx.expose_function("getEdgeToken", lambda: mint_token(url, api_key))
            page = ctx.new_page()
            page.goto(f"{url}/")
            yield page
        finally:
            ctx.close()


def call(url: str, packets: int, api_key: str | None = None) -> dict[str, Any]:
    with chromium_page(url, api_key) as page:
        page.click("#call")
        page.wait_for_function(
            f"window.packetsReceived > {packets} || window.callState === 'failed'",
            timeout=30_000,
        )
        result = dict(
            page.evaluate(
                "({state: window.callState, error: window.callError,"
                " packets: window.packetsReceived, energy: window.inboundAudioEnergy,"
                " setup_ms: window.setupMs})"
            )
        )
        page.click("#hangup")
        page.wait_for_function(
            "window.callState === 'ended' || window.callState === 'failed'", timeout=10_000
        )
        return result


def main(argv: list[str]) -> int:
    keys_file = os.environ.get("TXR_API_KEYS_FILE")
    if argv[:1] == ["--api-keys"] and len(argv) >= 2:
        keys_file, argv = argv[1], argv[2:]
    try:
        from lab.peer import read_api_key

        key = read_api_key(keys_file)
        result = call(argv[0], int(argv[1]) if len(argv) > 1 else 50, key)
    except Exception as exc:  # one line for the caller, no traceback
        result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result.get("state") == "connected" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
