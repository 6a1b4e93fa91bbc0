"""bench.paced: the echoes' gaps are cut per call and by window; plain sockets carry packets
of the SRTP packets' size; the pacer sends every call's packets in order, on time."""

from __future__ import annotations

import array
import socket
import time

from bench import paced


def test_gaps_are_cut_by_window_per_call() -> None:
    def call(times: list[float]) -> paced.Established:
        c = paced.Established(None, ("127.0.0.1", 1), [], None)  # type: ignore[arg-type]
        c.arrivals = array.array("d", times)
        return c

    media = paced.Media([call([0.0, 0.02, 0.04, 0.10]), call([0.03, 0.05])], None)  # type: ignore[arg-type]
    gaps, got, expected = media.gaps(0.0, 0.06)
    # per call, never across calls: 0.02, 0.02 from the first, 0.02 from the second
    assert [round(g, 3) for g in gaps] == [0.02, 0.02, 0.02]
    assert (got, expected) == (5, 6)  # 2 calls x 0.06 s / 20 ms
    assert media.gaps(0.2, 0.3)[:2] == ([], 0)


def test_plain_calls_are_paced_and_their_echoes_counted() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.1)
    calls = paced.plain_calls(echo.getsockname(), 3, 10)
    for c in calls:  # RTP of an SRTP packet's size: header, 80-byte Opus, the tag's room
        assert {len(p) for p in c.packets} == {12 + 80 + paced.SRTP_TAG_LEN}
        assert [int.from_bytes(p[2:4], "big") for p in c.packets] == list(range(10))
        assert all(p[0] == 0x80 for p in c.packets)
    media = paced.Media(calls, None, slack=0.002, timestamps=False)  # type: ignore[arg-type]
    media.start()
    echoed = 0
    deadline = time.monotonic() + 10
    try:
        while echoed < 30 and time.monotonic() < deadline:
            try:
                data, addr = echo.recvfrom(2048)
            except TimeoutError:
                continue
            echo.sendto(data, addr)
            echoed += 1
        while media.echoes() < 30 and time.monotonic() < deadline:
            time.sleep(0.01)  # the receiver thread counts the last echoes
    finally:
        media.close()
        echo.close()
        for c in calls:
            c.sock.close()
    assert media.ran_out  # every call's 10 packets were sent, then the pacer stopped
    assert [c.echoes for c in calls] == [10, 10, 10]
    assert len(media.late) == 30 and min(media.late) >= 0.0
    assert calls[0].arrivals == array.array("d")  # counting only: no timestamps kept


def test_settle_stops_the_pacer_and_counts_what_never_came_back() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes packets, echoes none
    sink.bind(("127.0.0.1", 0))
    calls = paced.plain_calls(sink.getsockname(), 2, 1000)
    media = paced.Media(calls, None, timestamps=False, poll_every=0.001)  # type: ignore[arg-type]
    media.start()
    try:
        deadline = time.monotonic() + 10
        while media.sent() < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        lost = media.settle(quiet=0.05)
        sent = media.sent()
        assert lost == sent >= 10  # nothing was echoed
        time.sleep(0.1)
        assert media.sent() == sent and not media.ran_out  # the pacer stopped for good
    finally:
        media.close()
        sink.close()
        for c in calls:
            c.sock.close()
