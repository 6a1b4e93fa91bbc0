"""A headless Chromium call that restarts ICE when its network changes, driven over stdin/stdout
(run in the lab's client namespace; `BrowserDriver` runs it from a test or a benchmark).

    python -m lab.browserrestart [--api-keys FILE] URL

Loads the transceiver's demo page (lab.browsercall.chromium_page), clicks Call, waits for echoed
audio and prints one JSON line per event; reads one command per line:

    {"event": "call", "state", "url", "local": [a, p], "remote": [a, p], "ufrag", "setup_ms"}
    restart [now] -> the client's network has just changed (the caller moved its address): wait
                 until Chromium notices (its ICE connection state leaves connected/completed,
                 at most DETECT_TIMEOUT s), call the page's window.restartIce() (new offer,
                 PATCH, answer applied), wait for RESUMED echoed packets on the new path, then
                 {"event": "restart", "state", "dtls", "url", "local", "remote", "ufrag",
                  "detect_ms", "restart_ms", "answered_ms", "switch_ms", "gap_ms",
                  "packets_after", "ice_states"}
                 detect_ms: command -> ICE state change (null: none seen, restarted anyway);
                 `restart now` skips the wait (an app told of the change by the OS);
                 restart_ms: restartIce() -> answer applied; answered_ms: command -> a new
                 candidate pair's check answered (through the relay); switch_ms: command ->
                 Chromium's selected candidate pair changed (both sampled); gap_ms: the
                 longest silence in the echo since the command (getStats'
                 lastPacketReceivedTimestamp, sampled every SAMPLE_MS: the last packet before
                 the change -> the first after)
    hangup    -> {"event": "hangup", "state"}, exit 0

A failure is {"event": ..., "state": "failed", "error": ...}, never a traceback.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from types import TracebackType
from typing import Any, Self

from lab.edge import EdgeLab, LabError
from lab.peer import LAB_KEYS_FILE

DETECT_TIMEOUT = 10.0
RESUMED = 50  # echoed packets on the new path (1 s of audio)
SAMPLE_MS = 20

# Installed once the call is up: a getStats sampler (time, packets received, the last one's
# arrival time, the selected candidate pair, the pairs that got a check answered) and the ICE
# state changes, on window.
# `pc` is the demo page's peer connection (a top-level binding of its script).
_INSTALL = f"""() => {{
  window.edgeSamples = [];
  window.edgeIceStates = [];
  pc.addEventListener("iceconnectionstatechange",
    () => window.edgeIceStates.push([performance.now(), pc.iceConnectionState]));
  setInterval(async () => {{
    if (!pc) return;
    const stats = await pc.getStats();
    let packets = 0, last = 0, pair = null;
    const answered = [];
    stats.forEach((r) => {{
      if (r.type === "candidate-pair" && r.responsesReceived > 0) answered.push(r.id);
      if (r.type === "inbound-rtp" && r.kind === "audio") {{
        packets += r.packetsReceived || 0;
        last = Math.max(last, r.lastPacketReceivedTimestamp || 0);
      }}
      if (r.type === "transport") pair = r.selectedCandidatePairId || null;
    }});
    window.edgeSamples.push([performance.now(), packets, last, pair, answered]);
  }}, {SAMPLE_MS});
}}"""

# The selected candidate pair's addresses, the DTLS state and the server's ufrag in use.
_PATH = """async () => {
  const stats = await pc.getStats();
  let pair = null, local = null, remote = null, dtls = null;
  stats.forEach((r) => {
    if (r.type === "transport") { dtls = r.dtlsState; pair = stats.get(r.selectedCandidatePairId); }
  });
  if (pair) {
    const l = stats.get(pair.localCandidateId), m = stats.get(pair.remoteCandidateId);
    local = l ? [l.address, l.port] : null;
    remote = m ? [m.address, m.port] : null;
  }
  const ufrag = (pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1];
  return {local, remote, dtls, ufrag, ice: pc.iceConnectionState, state: window.callState,
          url: window.callUrl};
}"""


def _gap_ms(samples: list[list[float]], since: float) -> float | None:
    """The longest time between two successive echoed packets seen after `since` (page ms)."""
    gap = None
    prev = None
    for at, packets, last, *_ in samples:
        if prev is not None and at >= since and packets > prev[1] and last and prev[2]:
            d = last - prev[2]
            gap = d if gap is None else max(gap, d)
        prev = (at, packets, last)
    return None if gap is None else round(gap, 1)


def _switch_ms(samples: list[list[Any]], since: float) -> float | None:
    """ms from `since` until Chromium's selected candidate pair changed (None: it did not)."""
    before = [s[3] for s in samples if s[0] < since]
    if not before:
        return None
    for at, _, _, pair, _ in samples:
        if at >= since and pair and pair != before[-1]:
            return round(at - since, 1)
    return None


def _answered_ms(samples: list[list[Any]], since: float) -> float | None:
    """ms from `since` until a candidate pair new since then had a check answered (sampled):
    the new path's first check through the relay, and the transceiver's answer."""
    old = {p for s in samples if s[0] < since for p in s[4]}
    for at, *_, answered in samples:
        if at >= since and set(answered) - old:
            return round(at - since, 1)
    return None


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def _packets(page: Any) -> int:
    return int(page.evaluate("window.edgeSamples.length ? window.edgeSamples.at(-1)[1] : 0"))


def restart(page: Any, detect: bool = True) -> dict[str, Any]:
    t0 = page.evaluate("performance.now()")
    left_connected = (
        f"window.edgeIceStates.some(([t, s]) => t >= {t0}"
        " && s !== 'connected' && s !== 'completed')"
    )
    detect_ms = None
    if detect:
        try:
            page.wait_for_function(left_connected, timeout=DETECT_TIMEOUT * 1000, polling=10)
            detect_ms = round(page.evaluate("performance.now()") - t0, 1)
        except Exception:  # playwright's TimeoutError: restart anyway, as an app on a timer
            pass
    if page.evaluate("window.callState") != "connected":
        raise LabError(
            f"the call {page.evaluate('window.callState')} before the restart"
            f" ({page.evaluate('window.callError')}); ICE states:"
            f" {[s for t, s in page.evaluate('window.edgeIceStates') if t >= t0]}"
        )
    restarted = page.evaluate("window.restartIce()")
    base = _packets(page)
    page.wait_for_function(
        f"window.edgeSamples.length && window.edgeSamples.at(-1)[1] >= {base + RESUMED}"
        " || window.callState === 'failed'",
        timeout=30_000,
    )
    states = page.evaluate("window.edgeIceStates")
    if page.evaluate("window.callState") != "connected":
        raise LabError(
            f"the call {page.evaluate('window.callState')} after restartIce()"
            f" ({page.evaluate('window.callError')}); ICE states:"
            f" {[s for t, s in states if t >= t0]}"
        )
    path = page.evaluate(_PATH)
    samples = page.evaluate("window.edgeSamples")
    return {
        "event": "restart",
        "state": path["state"],
        "error": page.evaluate("window.callError"),
        "dtls": path["dtls"],
        "url": path["url"],
        "local": path["local"],
        "remote": path["remote"],
        "ufrag": restarted["ufrag"],
        "detect_ms": detect_ms,
        "restart_ms": restarted["ms"],
        "gap_ms": _gap_ms(samples, t0),
        "switch_ms": _switch_ms(samples, t0),
        "answered_ms": _answered_ms(samples, t0),
        "packets_after": _packets(page) - base,
        "ice_states": [s for t, s in states if t >= t0],
    }


def main(argv: list[str]) -> int:
    import argparse

    from lab.browsercall import chromium_page
    from lab.peer import add_api_keys_option, read_api_key

    ap = argparse.ArgumentParser(
        prog="python -m lab.browserrestart",
        description="A headless Chromium call that restarts ICE on command (stdin/stdout JSON).",
    )
    add_api_keys_option(ap)
    ap.add_argument("url", help="the transceiver's base URL (it serves the demo page)")
    args = ap.parse_args(argv)
    try:
        with chromium_page(args.url, read_api_key(args.api_keys)) as page:
            page.click("#call")
            page.wait_for_function(
                "window.packetsReceived > 25 || window.callState === 'failed'", timeout=30_000
            )
            if page.evaluate("window.callState") != "connected":
                raise LabError(f"call failed: {page.evaluate('window.callError')}")
            page.evaluate(_INSTALL)
            path = page.evaluate(_PATH)
            emit({"event": "call", **path, "setup_ms": page.evaluate("window.setupMs")})
            for line in sys.stdin:
                cmd = line.strip()
                if cmd in ("restart", "restart now"):
                    try:
                        emit(restart(page, detect=cmd == "restart"))
                    except Exception as exc:
                        emit({"event": "restart", "state": "failed", "error": str(exc)})
                elif cmd == "hangup":
                    page.click("#hangup")
                    page.wait_for_function(
                        "window.callState === 'ended' || window.callState === 'failed'",
                        timeout=10_000,
                    )
                    emit({"event": "hangup", "state": page.evaluate("window.callState")})
                    return 0
                elif cmd:
                    emit({"event": "error", "error": f"unknown command {cmd!r}"})
    except Exception as exc:  # one line for the caller, no traceback
        emit({"event": "call", "state": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


class BrowserDriver:
    """`python -m lab.browserrestart` in the lab's client namespace, as a context manager."""

    def __init__(self, lab: EdgeLab, url: str) -> None:
        self.log = lab.tmpdir / f"browserrestart-{time.monotonic_ns()}.log"
        keys = lab.tmpdir / LAB_KEYS_FILE
        auth = ["--api-keys", str(keys)] if keys.exists() else []
        with self.log.open("wb") as err:
            self.proc = lab.spawn_client(
                [sys.executable, "-m", "lab.browserrestart", *auth, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            raw = self.proc.stdout.readline() if ready else b""
            if not raw:
                tail = self.log.read_text(errors="replace")[-2000:]
                what = "exited" if ready else f"said nothing for {timeout} s"
                raise LabError(f"browserrestart {what}\n{tail}")
            doc = dict(json.loads(raw))
            if doc.get("event") == event:
                if doc.get("state") == "failed":
                    raise LabError(f"browserrestart {event} failed: {doc.get('error')}")
                return doc
            if doc.get("event") == "error":
                raise LabError(f"browserrestart: {doc['error']}")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_call(self, timeout: float = 60) -> dict[str, Any]:
        return self._wait("call", timeout)

    def restart(self, *, detect: bool = True, timeout: float = 60) -> dict[str, Any]:
        """The network just changed: (detect,) restartIce(), PATCH, echo back (see above)."""
        self._send("restart" if detect else "restart now")
        return self._wait("restart", timeout)

    def hangup(self) -> dict[str, Any]:
        self._send("hangup")
        doc = self._wait("hangup", 20)
        self.proc.wait(timeout=20)
        return doc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
