"""Fixtures for the XDP program's unit tests: one compiled program and one fib sandbox per
session (compiling takes seconds), maps reset before every test."""

from __future__ import annotations

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
