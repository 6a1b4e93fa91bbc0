"""The program's clock (bpf/clock.h): the coarse clock, read by the helper once per jiffy on
each CPU and answered from that CPU's reading for the rest of the jiffy. What shows which clock
a packet read: the `seen` a client packet writes into its flow (seen_of(now)). BPF_PROG_TEST_RUN
runs on the calling CPU: each test pins the harness's namespace thread to one (`one_cpu`);
the relay fixture's reset clears the readings a test made up."""

from __future__ import annotations

import ctypes as ct

from tests.bpf.bpfharness import (
    FLOW_SEEN_SHIFT,
    NEAR,
    RTP,
    Relay,
    client_frame,
    coarse_ns,
    seen_of,
    tunnelled,
)

FRAME = client_frame(RTP)
AHEAD = 5 << FLOW_SEEN_SHIFT  # a made-up reading five seen units ahead of the real clock


def readings(relay: Relay) -> list[tuple[int, int]]:
    """(jiffies, ns) of every CPU's reading."""
    return [(r.jiffies, r.ns) for r in relay.clock_readings.getvalue(ct.c_uint32(0))]


def set_reading(relay: Relay, cpu: int, jiffies: int, ns: int) -> None:
    cpus = relay.clock_readings.getvalue(ct.c_uint32(0))
    cpus[cpu].jiffies, cpus[cpu].ns = jiffies, ns
    relay.clock_readings[ct.c_uint32(0)] = cpus


def flow_hit_seen(relay: Relay) -> int:
    """Run one client packet of an idle flow (no copy of it yet: the flow itself is read and
    refreshed) and return the `seen` it wrote."""
    relay.reset()
    relay.set_flow(NEAR)
    assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
    val = relay.get_flow()
    assert val is not None
    return int(val.seen)


def test_a_packet_reads_the_coarse_clock_and_keeps_the_reading_on_its_cpu(
    relay: Relay, one_cpu: int
) -> None:
    relay.clock_readings.clear()
    before = coarse_ns()
    seen = flow_hit_seen(relay)
    after = coarse_ns()
    cpus = readings(relay)
    jiffies, ns = cpus[one_cpu]
    assert jiffies and before <= ns <= after, (before, cpus[one_cpu], after)
    assert seen == seen_of(ns)
    assert all(r == (0, 0) for i, r in enumerate(cpus) if i != one_cpu), cpus


def test_a_reading_answers_the_rest_of_its_jiffy(relay: Relay, one_cpu: int) -> None:
    """A reading made up for the current jiffy (five seen units ahead) is what the next packet
    writes into its flow: no helper call. A try whose jiffy ended before the packet ran (the
    program then took a new reading) proves nothing and is made again."""
    for _ in range(50):
        flow_hit_seen(relay)  # a real reading for the current jiffy
        jiffies, ns = readings(relay)[one_cpu]
        set_reading(relay, one_cpu, jiffies, ns + AHEAD)
        relay.set_flow(NEAR)
        assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
        if readings(relay)[one_cpu][0] == jiffies:  # still that jiffy: the reading was used
            assert relay.get_flow().seen == seen_of(ns + AHEAD)
            assert readings(relay)[one_cpu] == (jiffies, ns + AHEAD)
            return
    raise AssertionError("a jiffy ended during every try")


def test_a_reading_from_an_earlier_jiffy_is_replaced(relay: Relay, one_cpu: int) -> None:
    """A reading of another jiffy is never used: the packet reads the clock again, writes the
    real time into its flow and keeps the new reading."""
    flow_hit_seen(relay)
    jiffies, ns = readings(relay)[one_cpu]
    set_reading(relay, one_cpu, jiffies - 1, ns + AHEAD)
    relay.set_flow(NEAR)
    before = coarse_ns()
    assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
    after = coarse_ns()
    new_jiffies, new_ns = readings(relay)[one_cpu]
    assert new_jiffies >= jiffies and before <= new_ns <= after
    assert relay.get_flow().seen == seen_of(new_ns) != seen_of(ns + AHEAD)
