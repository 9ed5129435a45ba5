"""Fixtures of the server tests: small passes and a real server per test module."""

from __future__ import annotations

import pytest

from zs_core import scene
from zs_server_helpers import ServerThread, make_settings


@pytest.fixture(scope="session")
def small_passes():
    return scene.sphere_scene(views=2, width=64, height=64, texture_size=64)


@pytest.fixture(scope="session")
def small_npz(small_passes) -> bytes:
    return small_passes.to_npz_bytes()


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """One server per test module (limits: 8 views, 256 px, 200 steps, 1024 texels)."""
    with ServerThread(make_settings(tmp_path_factory.mktemp("zs-data")), tiny) as running:
        yield running


@pytest.fixture(scope="module")
def faulty_os():
    """server.durable's os calls through an injectable fault layer (zs_faults.FaultyOs)."""
    from server import durable
    from zs_faults import FaultyOs

    layer = FaultyOs(durable.os)
    real, durable.os = durable.os, layer
    yield layer
    durable.os = real
