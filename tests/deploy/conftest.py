"""Fixtures for the deployment tests: the images of this tree (`make images`, built once and
cached on their inputs), and the single-cluster overlay running as pods in lab namespaces
(tests/deploy/podstack.py). Everything is removed after each test, also on failure."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.pods import PodLab, build_images, sweep_stale_pods
from tests.deploy.podstack import Stack, assert_clean


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.fail("the pod tests need root (podman, network namespaces, XDP)")
    for leftover in sweep_stale_pods():  # of earlier runs that were killed outright
        print(f"removed leftover {leftover}")
    return build_images()


@pytest.fixture
def stack(images: dict[str, str]) -> Iterator[Stack]:
    with PodLab() as lab:
        s = Stack(lab, images)
        s.up()
        yield s
    assert_clean(lab)
