"""bench.srtp_blast, briefly: one call set up, a fixed rate of SRTP sent, every packet echoed
and the server's cost per echo printed (it broke once unnoticed when serve began to need keys)."""

from __future__ import annotations

import asyncio
import re

import pytest

from bench import srtp_blast

pytestmark = [pytest.mark.timeout(120)]


def test_a_short_blast_is_echoed_and_costed(capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(srtp_blast.blast(500, 1.0, None, None, None))
    out = capsys.readouterr().out
    sent, echoed = map(int, re.search(r"sent (\d+) .*echoed (\d+)", out).groups())  # type: ignore[union-attr]
    assert sent >= 400 and echoed >= 0.95 * sent, out
    assert float(re.search(r"= ([\d.]+) us per echo", out).group(1)) > 0, out  # type: ignore[union-attr]
