"""Drive lab/callclient.py (aiortc calls in the client netns) from a test or the demo."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from typing import Any

from lab.edge import EdgeLab, LabError
from lab.peer import LAB_KEYS_FILE


class CallDriver:
    """The callclient process: one JSON line per event on stdout, commands on stdin."""

    def __init__(
        self, lab: EdgeLab, urls: list[str], headers: dict[str, str] | None = None
    ) -> None:
        self.log = lab.tmpdir / f"callclient-{time.monotonic_ns()}.log"
        # The lab's API keys file (lab.peer.lab_key_file), when its transceivers use one.
        keys = lab.tmpdir / LAB_KEYS_FILE
        auth = ["--api-keys", str(keys)] if keys.exists() else []
        extra = [a for k, v in (headers or {}).items() for a in ("--header", f"{k}: {v}")]
        with self.log.open("wb") as err:
            self.proc = lab.spawn_client(
                [sys.executable, "-m", "lab.callclient", *auth, *extra, *urls],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.calls: list[dict[str, Any]] = []

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        raw = self.proc.stdout.readline() if ready else b""
        if not raw:
            tail = self.log.read_text(errors="replace")[-2000:]
            what = "exited" if ready else f"said nothing for {timeout} s"
            raise LabError(f"callclient {what}\n{tail}")
        return dict(json.loads(raw))

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = self._line(max(0.0, deadline - time.monotonic()))
            if doc.get("event") == event:
                return doc
            if doc.get("event") == "error":
                raise LabError(f"callclient: {doc['error']}")

    def setup(self, url: str, timeout: float = 40) -> dict[str, Any]:
        """One call timed phase by phase (lab.callclient `setup`); raises if it failed."""
        self._send(f"setup {url}")
        doc = self.wait("setup", timeout)
        if doc.get("error") or doc.get("echo_ms") is None:
            raise LabError(f"timed call failed: {doc.get('error') or 'no echo'}")
        return doc

    def wait_call(self, timeout: float = 40) -> dict[str, Any]:
        """The next call's outcome; raises if it failed."""
        doc = self.wait("call", timeout)
        self.calls.append(doc)
        if doc["state"] != "connected":
            raise LabError(f"call {doc['call']} failed: {doc.get('error')}")
        return doc

    def call(self, url: str) -> dict[str, Any]:
        self._send(f"call {url}")
        return self.wait_call()

    def try_call(self, url: str) -> dict[str, Any]:
        """A new call whose outcome (connected or failed, with the error) is returned."""
        self._send(f"call {url}")
        doc = self.wait("call", 40)
        self.calls.append(doc)
        return doc

    def stats(self) -> list[dict[str, Any]]:
        self._send("stats")
        return list(self.wait("stats", 10)["calls"])

    def rtt(
        self, call: int, n: int, direct: str | None = None, source: str | None = None
    ) -> list[float]:
        """n STUN round trips on call `call`'s credentials (ms; a lost probe is no sample):
        to the VIP, or `direct` to an address, or to the VIP from the local address `source`."""
        if direct:
            self._send(f"rttdirect {call} {n} {direct}")
        elif source:
            self._send(f"rttfrom {call} {n} {source}")
        else:
            self._send(f"rtt {call} {n}")
        return list(self.wait("rtt", 10 + 2 * n)["ms"])

    def restart(self, call: int, host: str) -> dict[str, Any]:
        """ICE restart of `call` onto the client address `host` (lab.netchange.move_client made
        it); raises if it failed. The call's max_gap_ms starts over with it."""
        self._send(f"restart {call} {host}")
        doc = self.wait("restart", 40)
        if doc["state"] != "connected":
            raise LabError(f"call {call}: ICE restart failed: {doc.get('error') or doc['state']}")
        return doc

    def wait_rtp(self, call: int, more: int, timeout: float = 20) -> dict[str, Any]:
        """Until call `call` has received `more` echoed RTP packets beyond its count now."""
        start = self.stats()[call]["rtp"]
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()[call]
            if s["rtp"] >= start + more:
                return s
            if time.monotonic() > deadline:
                raise LabError(f"call {call}: {s['rtp'] - start} RTP echoes in {timeout} s")
            time.sleep(0.1)

    def hangup(self) -> list[dict[str, Any]]:
        self._send("hangup")
        doc = self.wait("stats", 30)
        while not doc.get("final"):
            doc = self.wait("stats", 30)
        self.proc.wait(timeout=10)
        return list(doc["calls"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
