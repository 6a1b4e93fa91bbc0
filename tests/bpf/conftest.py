"""Fixtures for the XDP program's unit tests: one compiled program and one fib sandbox per
session (compiling takes seconds), maps reset before every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from control.program import compile_relay, load_xdp_fn
from lab.fibsandbox import NetnsWorker, fib_sandbox
from tests.bpf.bpfharness import Relay


@pytest.fixture(scope="session")
def relay_session() -> Iterator[Relay]:
    with fib_sandbox() as sandbox, NetnsWorker(sandbox.path) as worker:
        bpf = compile_relay()
        try:
            fn = load_xdp_fn(bpf)
            yield Relay(bpf, fn.fd, worker, sandbox)
        finally:
            bpf.cleanup()


@pytest.fixture
def relay(relay_session: Relay) -> Relay:
    relay_session.reset()
    return relay_session


@pytest.fixture
def one_cpu(relay: Relay) -> Iterator[int]:
    """The harness's namespace thread on one CPU for the test (yielded: BPF_PROG_TEST_RUN runs
    on the calling CPU, so consecutive packets share its per-CPU maps), then back to all it had."""
    allowed = relay.worker.call(os.sched_getaffinity, 0)
    cpu = min(allowed)
    relay.worker.call(os.sched_setaffinity, 0, {cpu})
    try:
        yield cpu
    finally:
        relay.worker.call(os.sched_setaffinity, 0, allowed)
