"""Call set-up time with a real browser: headless Chromium on the demo page, N calls in a row.

    .venv/bin/python -m bench.browser_setup --calls 10
    .venv/bin/python -m bench.browser_setup --source /path/to/other/checkout

Prints the page's POST-to-connected time (`window.setupMs`) and the server's own
`txr_call_setup_seconds` (offer received to DTLS connected) median. aiortc clients cannot show
this: aioice adds ~20 ms of check pacing of its own, and browsers nominate differently.
The first call warms up and is not counted in the page's numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.srtp_blast import EXE, RUN_FROM_SOURCE
from bench.txr_measure import _histogram_p50
from lab.browsercall import ARGS as CHROMIUM_ARGS
from lab.browsercall import CHROMIUM


def main(calls: int, source: str | None) -> None:
    from playwright.sync_api import sync_playwright

    args = ["serve", "--listen=127.0.0.1:0", "--udp=127.0.0.1:0", "--advertise=127.0.0.1"]
    args.append("--log-level=warning")
    argv = [sys.executable, "-c", RUN_FROM_SOURCE, source, *args] if source else [str(EXE), *args]
    with tempfile.TemporaryDirectory(prefix="txr-browser-setup-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not (m := re.search(r"http=(\S+)", log_path.read_text())):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"server did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            base = m.group(1)
            setups: list[int] = []
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"),
                    executable_path=CHROMIUM,
                    headless=True,
                    args=CHROMIUM_ARGS,
                )
                try:
                    page = ctx.new_page()
                    page.goto(base + "/")
                    for i in range(calls + 1):
                        page.click("#call")
                        page.wait_for_function(
                            "window.setupMs !== null || window.callState === 'failed'",
                            timeout=30_000,
                        )
                        setup = page.evaluate("window.setupMs")
                        if setup is None:
                            raise SystemExit(f"call failed: {page.evaluate('window.callError')}")
                        if i:
                            setups.append(setup)
                        page.click("#hangup")
                        page.wait_for_function(
                            "window.callState === 'ended' || window.callState === 'failed'"
                        )
                finally:
                    ctx.close()
            text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        finally:
            proc.terminate()
            proc.wait()
    server = _histogram_p50(text, "txr_call_setup_seconds")
    print(
        f"server {source or 'this tree'}, {calls} Chromium calls, load {os.getloadavg()[0]:.1f}\n"
        f"  page POST->connected p50 {statistics.median(setups):.0f} ms"
        f" (min {min(setups)}, max {max(setups)})\n"
        f"  server offer->DTLS connected p50 ~{server:.0f} ms (histogram, warm-up call included)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--source", help="run the server from this source tree")
    args = parser.parse_args()
    main(args.calls, args.source)
