"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server on a private unix socket; yields its URL and is killed afterwards."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The shared server, flushed before each test so tests cannot see each other's keys."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (XDP, network namespaces)")
        for item in items:
            if "lab" in item.keywords:
                item.add_marker(skip)
