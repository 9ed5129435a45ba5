"""Add-on tests run the real Blender-as-a-module (bpy); each test starts from an empty scene."""

from __future__ import annotations

import os
import sys

import pytest

try:
    import bpy
except ImportError:  # bpy is an optional test dependency: skip the add-on tests without it
    bpy = None
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def scene():
    """A fresh, empty scene (factory settings), the context scene."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


@pytest.fixture
def addon(scene):
    """The add-on enabled the way Blender does it (so it has preferences), on a fresh scene
    -> its preferences."""
    import addon_utils

    addon_utils.enable("blender_addon", default_set=True, handle_error=_raise)
    yield bpy.context.preferences.addons["blender_addon"].preferences
    addon_utils.disable("blender_addon", default_set=True, handle_error=_raise)


def _raise(exc):
    raise exc


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """A real uvicorn ZS server on a free loopback port with the session's tiny model."""
    from zs_server_helpers import ServerThread, make_settings

    with ServerThread(make_settings(tmp_path_factory.mktemp("zs-data")), tiny) as running:
        yield running


@pytest.fixture
def sampler(tiny):
    """zs_core in this process, as the CLI injects it; remembers the requests and passes it got."""
    from zs_core import run
    from zs_core.protocol import Passes, Request

    def sample(request: dict, passes, out_dir):
        sample.requests.append(request)
        sample.passes.append(passes)
        return run.run_job(tiny, Request.from_dict(request), Passes.from_arrays(passes.arrays()).validate(), out_dir)

    sample.requests, sample.passes = [], []
    return sample


def pytest_sessionfinish(session, exitstatus):
    session.config.zs_exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """bpy 4.2 and 4.5 crash or hang while the interpreter shuts down after these tests
    (a segfault with 4.2.23, a futex wait with 4.5.15; 5.0 exits cleanly): once pytest has
    reported, leave with its exit status before that."""
    if bpy is not None and bpy.app.version < (5, 0, 0):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "zs_exit_status", 1))
