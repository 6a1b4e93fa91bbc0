"""Call set-up timed phase by phase from headless Chromium (bench.setup_rtts), in a client netns.

    python -m lab.browsersetup [--api-keys FILE] http://198.18.2.2:8080 [calls]

Loads the page the transceiver serves (only for its origin), then runs lab/assets/setup.js there
`calls` times, one call after another on one warm HTTP connection: each from its POST to the
answer, ICE connected, DTLS connected, the first packet of a greet-echo app's greeting and the
first echo. Prints one JSON line per call, {"answer_ms", "ice_ms", "dtls_ms", "greeting_ms",
"echo_ms", "error"}; exits 1 if a call failed. Chromium's flags and the client token are
lab.browsercall's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lab.browsercall import chromium_page
from lab.peer import add_api_keys_option, read_api_key
from transceiver.app import GREETING_PAYLOAD

SCRIPT = Path(__file__).resolve().parent / "assets" / "setup.js"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.browsersetup", description=__doc__.splitlines()[0]
    )
    ap.add_argument("url", help="the transceiver's (or VIP's) HTTP base URL")
    ap.add_argument("calls", nargs="?", type=int, default=10, help="calls in a row (%(default)s)")
    add_api_keys_option(ap)
    args = ap.parse_args(argv)
    failed = False
    try:
        with chromium_page(args.url, read_api_key(args.api_keys)) as page:
            page.set_default_timeout(60_000)
            script = SCRIPT.read_text()
            for _ in range(args.calls):
                result = dict(page.evaluate(script, {"greeting": list(GREETING_PAYLOAD)}))
                failed = failed or result.get("error") is not None
                print(json.dumps(result), flush=True)
    except Exception as exc:  # one line for the caller, no traceback
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
