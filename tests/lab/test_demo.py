"""`make demo` (lab/demo.py): it reports, exits 0, and leaves nothing behind, also on Ctrl-C."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.topology import sweep_lab
from tests.lab.labhelp import assert_clean

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


class Demo:
    """`python -m lab.demo`; a reader thread turns its stdout lines into events."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.demo", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.prefix = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"demo printed no {pattern!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"demo exited before printing {pattern!r}")
            self.out.append(line)
            found = re.search(r"building lab (\S+)", line)
            if found:
                self.prefix = found.group(1)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = 60) -> tuple[str, str]:
        """Wait for the exit; the rest of stdout and all of stderr."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                if self.prefix:
                    sweep_lab(self.prefix)
        rest = []
        while (line := self.lines.get(timeout=10)) is not None:
            rest.append(line)
        assert self.proc.stderr is not None
        return "".join(self.out + rest), self.proc.stderr.read()


def _prefix(line: str) -> str:
    found = re.search(r"building lab (\S+)", line)
    assert found, line
    return found.group(1)


def test_demo_reports_calls_through_both_transceivers() -> None:
    demo = Demo("--calls", "2", "--seconds", "1")
    demo.wait_line("building lab", timeout=10)
    out, err = demo.finish(timeout=150)
    assert demo.proc.returncode == 0, err
    # call, client, relay, transceiver, setup ms, RTP sent, RTP back
    rows = re.findall(
        r"^\s+(\d)\s+198\.18\.1\.\d+:\d+\s+([01])\s+(\d)\s+[\d.]+\s+(\d+)\s+(\d+)\s", out, re.M
    )
    assert [(c, t) for c, _, t, _, _ in rows] == [("0", "7"), ("1", "8")]
    for _, _, _, sent, back in rows:
        assert int(sent) >= 50 and int(back) >= 0.8 * int(sent)
    assert len(re.findall(r"fwd_decap\s+\d+", out)) >= 1
    assert "OK: 2 calls" in out
    assert_clean(demo.prefix)


@pytest.mark.parametrize(
    ("sig", "when"),
    [
        (signal.SIGINT, "lab kept"),  # Ctrl-C while the lab is up and idle
        (signal.SIGINT, "relays loaded"),  # Ctrl-C while calls are running
        (signal.SIGTERM, "lab kept"),
    ],
)
def test_demo_interrupted_removes_the_lab(sig: signal.Signals, when: str) -> None:
    demo = Demo("--keep", "--seconds", "5")
    demo.wait_line(when)
    demo.proc.send_signal(sig)
    out, err = demo.finish(timeout=90)
    assert demo.proc.returncode == 130, f"stdout:\n{out}\nstderr:\n{err}"
    assert "interrupted: lab removed" in err and "Traceback" not in err
    assert_clean(demo.prefix)
