"""Fixtures of the server tests: small passes and a real server per test module."""

from __future__ import annotations

import os
import secrets

import pytest

from zs_core import scene
from zs_server_helpers import ServerThread, backend_settings, make_settings


@pytest.fixture(scope="session")
def small_passes():
    return scene.sphere_scene(views=2, width=64, height=64, texture_size=64)


@pytest.fixture(scope="session")
def small_npz(small_passes) -> bytes:
    return small_passes.to_npz_bytes()


def pytest_generate_tests(metafunc):
    """A module that sets ``BACKENDS = ("embedded", "ray")`` runs its tests that take the
    ``server`` fixture against both the embedded worker and ``zs serve --ray`` (a test marked
    ``embedded_only`` against the embedded one only)."""
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("embedded_only"):
            backends = ("embedded",)
        metafunc.parametrize("backend", backends, indirect=True, scope="module")


def pytest_configure(config):
    config.addinivalue_line("markers", "embedded_only: in a module with BACKENDS, runs on the embedded worker only")


@pytest.fixture(scope="module")
def backend(request) -> str:
    """Which worker the module's server runs jobs on: "embedded" or "ray"."""
    return getattr(request, "param", "embedded")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the session (2 CPUs), shut down at its end. Its token comes
    from the environment: Ray would otherwise write one to ~/.ray/auth_token."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024 ** 2, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def server(backend, request, tiny, tmp_path_factory):
    """One server per test module (limits: 8 views, 256 px, 200 steps, 1024 texels), its
    jobs on the embedded worker or on Ray workers (``backend``)."""
    settings = make_settings(tmp_path_factory.mktemp("zs-data"), **backend_settings(request, backend))
    with ServerThread(settings, tiny) as running:
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
