"""Data channel messages from headless Chromium: `oai-events` beside a fake microphone.

    python -m lab.browserchannel [--api-keys FILE] http://198.18.2.2:8080 [packets]

Loads the page the transceiver serves (only for its origin: getUserMedia and fetch need it),
then runs lab/assets/channel.js there: a call of its own with an `oai-events` data channel,
JSON text and binary messages of 0 B .. 64 KB (lab.channelclient.SIZES) sent one at a time,
each echo compared byte for byte, and `packets` more echoed audio packets counted after the
messages. Prints one JSON line, {"state", "sent", "echoed", "bad", "rtt_ms", "audio_before",
"audio_after", "max_message_size", "first_mline", "setup_ms", "error"}, and exits 1 unless
every message came back identical. Chromium's flags, and the client token the page gets from
`window.getEdgeToken()` when an API keys file is given, are lab.browsercall's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lab.browsercall import chromium_page
from lab.channelclient import LABEL, SIZES
from lab.peer import add_api_keys_option, read_api_key

SCRIPT = Path(__file__).resolve().parent / "assets" / "channel.js"


def run(url: str, packets: int = 50, api_key: str | None = None) -> dict[str, Any]:
    with chromium_page(url, api_key) as page:
        page.set_default_timeout(90_000)
        arg = {"sizes": list(SIZES), "label": LABEL, "packets": packets}
        return dict(page.evaluate(SCRIPT.read_text(), arg))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.browserchannel", description=__doc__.splitlines()[0]
    )
    ap.add_argument("url", help="the transceiver's (or VIP's) HTTP base URL")
    ap.add_argument(
        "packets",
        nargs="?",
        type=int,
        default=50,
        help="echoed audio packets to count after the messages (%(default)s)",
    )
    add_api_keys_option(ap)
    args = ap.parse_args(argv)
    try:
        result = run(args.url, args.packets, read_api_key(args.api_keys))
    except Exception as exc:  # one line for the caller, no traceback
        result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    ok = result.get("error") is None and not result.get("bad") and result.get("sent", 0) > 0
    return 0 if ok and result.get("echoed") == result.get("sent") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
