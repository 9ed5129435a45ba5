"""Set Up Server (add-on preferences) on the real bpy: real interpreters, a real venv, real
pip, a real server started from what it installed.

The full install (about 1.6 GB, a minute or two) runs once in the whole suite: only under
the main Blender 5.0 environment (``heavy``), not again under the LTS environments of
``make test``; the errors run everywhere (each stops before or early in pip). Timers are
driven by hand (``Timers``): background mode has no event loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest

from addon_helpers import RecordingLayout, Timers
from blender_addon import preferences, server_setup
from blender_addon.client import Client
from blender_addon.operators import server as server_ops, server_setup as setup_ops
from zs_server_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
SETUP_TIMEOUT = 1800.0  # seconds; the real install takes about two minutes on 2 busy cores
# One real install per suite: `make test` runs tests/addon again under the LTS bpy builds.
heavy = pytest.mark.skipif(bpy.app.version < (5, 0, 0),
                           reason="the real install runs once, under the main Blender 5.0 environment")


def _raise(exc):
    raise exc


@pytest.fixture
def timers(monkeypatch):
    """Hand-driven timers; a set-up a failed test left running is cancelled and ended."""
    timers = Timers(monkeypatch)
    yield timers
    setup_ops.cancel()
    timers.run(SETUP_TIMEOUT)
    setup_ops.STATE.state = "idle"


def set_up(addon, timers, folder: Path) -> setup_ops.SetupState:
    """Press Set Up Server for ``folder`` and drive its timer to the end -> the state."""
    addon.server_folder = str(folder)
    assert bpy.ops.zs.setup_server() == {"FINISHED"}
    assert setup_ops.STATE.running and not bpy.ops.zs.setup_server.poll()  # one at a time
    timers.run(SETUP_TIMEOUT)
    assert not setup_ops.STATE.running and bpy.ops.zs.setup_server.poll()
    return setup_ops.STATE


def fake_python(path: Path, version: str) -> Path:
    """An executable that answers the probe like a Python ``version`` with venv would."""
    path.write_text(f"#!/bin/sh\necho {version}\necho {path}\necho venv\n")
    path.chmod(0o755)
    return path


def gb(count: int) -> str:
    return f"{count / 1024 ** 3:.1f} GB"


# --------------------------------------------------------------------------- the real thing


@heavy
@pytest.mark.slow
def test_set_up_server_installs_a_server_that_start_brings_up(addon, timers, tmp_path, monkeypatch):
    folder = tmp_path / "zs server"  # a space: the launch command must quote the path
    port = free_port()
    addon.server_url, addon.data_dir, addon.server_source = f"http://127.0.0.1:{port}", "", ""
    assert server_setup.resolve_source("") == ROOT  # in a checkout: the repository is what ships
    try:
        started = time.monotonic()
        state = set_up(addon, timers, folder)
        seconds = time.monotonic() - started
        assert state.state == "done", state.message
        assert state.step == state.count == len(server_setup.STEPS) and state.factor == 1.0
        zs = folder / "venv" / "bin" / "zs"
        assert addon.launch_command == f"'{zs}' serve"
        assert server_ops.split_command(addon.launch_command) == [str(zs), "serve"]
        assert Path(addon.data_dir) == folder / "data"
        assert "Launch Command set to" in state.message and "Start" in state.message
        log = (folder / server_setup.LOG_NAME).read_text()
        assert "Successfully installed" in log and "copied" in log and "$ " in log
        assert (folder / "source" / "pyproject.toml").is_file() and not (folder / "source" / "tests").exists()
        venv_bytes = server_setup.tree_bytes(folder / "venv")
        assert venv_bytes < server_setup.REQUIRED_BYTES  # the stated need covers what it took
        print(f"set-up: {seconds:.0f} s, venv {gb(venv_bytes)}, source "
              f"{server_setup.tree_bytes(folder / 'source') / 1024:.0f} KiB")

        # Start with that command: a real `zs serve` on the tiny model answers /v1/health.
        monkeypatch.setenv("ZS_DEFAULT_MODEL", "tiny")
        monkeypatch.setenv("ZS_DEVICE", "cpu")
        assert bpy.ops.zs.start_server() == {"FINISHED"}
        timers.run(server_ops.START_TIMEOUT)
        assert server_ops.STATUS.state == "online", server_ops.STATUS.message
        health = Client(addon.server_url, None).health()
        assert health["model"] == "tiny" and server_ops.STATUS.server_model == "tiny"
        assert (folder / "data" / "token").is_file()  # the data folder the set-up chose
        assert bpy.ops.zs.stop_server() == {"FINISHED"} and not server_ops.started_here()

        # Again into the same folder: the venv is reused, the project reinstalled.
        started = time.monotonic()
        state = set_up(addon, timers, folder)
        assert state.state == "done", state.message
        assert "reusing the virtual environment" in (folder / server_setup.LOG_NAME).read_text()
        print(f"set-up again: {time.monotonic() - started:.0f} s")
    finally:
        server_ops.stop()
        shutil.rmtree(folder, ignore_errors=True)  # 1.6 GB: not left in pytest's kept temp folders


@heavy
@pytest.mark.slow
def test_running_out_of_disk_during_pip_says_so(addon, timers, tmp_path, monkeypatch):
    """A real ENOSPC: the folder on a 150 MB tmpfs (the check before is lowered to let the
    set-up start); pip fills it with the first big package."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150M", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        monkeypatch.setattr(server_setup, "REQUIRED_BYTES", 1024 ** 2)
        state = set_up(addon, timers, mount / "server")
        assert state.state == "failed"
        assert state.message.startswith("not enough disk space: pip ran out of space"), state.message
        assert f"full log: {mount / 'server' / server_setup.LOG_NAME}" in state.message
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ---------------------------------------------------------------------------------- errors


def test_a_python_preference_that_is_not_3_11_is_named(addon, timers, tmp_path):
    addon.python = str(fake_python(tmp_path / "python-old", "3.9"))
    state = set_up(addon, timers, tmp_path / "server")
    assert state.state == "failed"
    assert state.message.startswith(f"no suitable Python 3.11 found; tried: the Python preference "
                                     f"({tmp_path / 'python-old'}): version 3.9."), state.message
    assert "set the Python preference to a Python 3.11" in state.message
    log = tmp_path / "server" / server_setup.LOG_NAME
    assert state.message.endswith(f"full log: {log}") and "version 3.9" in log.read_text()

    not_a_program = tmp_path / "python.txt"
    not_a_program.write_text("print('hello')\n")  # no exec bit: not runnable, even for root
    addon.python = str(not_a_program)
    state = set_up(addon, timers, tmp_path / "server")
    assert state.state == "failed" and f"({not_a_program}): cannot run it (Permission denied)" in state.message


def test_the_search_falls_back_to_blenders_python(tmp_path, monkeypatch):
    """PATH holds a python3.11 that is 3.12 and no python3: Blender's own 3.11 is next."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_python(bin_dir / "python3.11", "3.12")
    monkeypatch.setenv("PATH", str(bin_dir))
    lines = []
    found = server_setup.find_python("", lines.append)
    assert found.label == f"Blender's Python ({sys.executable})" and found.version == "3.11"
    assert lines[:2] == [f"python candidate python3.11 on PATH ({bin_dir / 'python3.11'}): version 3.12",
                         "python candidate python3 on PATH: not found"]


def test_an_unreachable_package_index_is_named(addon, timers, tmp_path, monkeypatch):
    # pip with no configuration, one index where nothing listens, one retry (it names the cause).
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    state = set_up(addon, timers, tmp_path / "server")
    assert state.state == "failed"
    # The first download is the build back end pyproject names.
    assert state.message.startswith("the package index could not be reached: pip could not download "
                                    "setuptools>=68 from http://127.0.0.1:9/simple"), state.message
    assert "(pip: Failed to establish a new connection: [Errno 111] Connection refused)" in state.message
    assert "Check the internet connection" in state.message
    assert state.message.endswith(f"full log: {tmp_path / 'server' / server_setup.LOG_NAME}")
    assert state.step == server_setup.STEPS.index("Installing packages with pip") + 1


def test_not_enough_disk_is_refused_before_anything_installs(addon, timers, tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    required = free + 1024 ** 4  # a TB more than there is
    monkeypatch.setattr(server_setup, "REQUIRED_BYTES", required)
    folder = tmp_path / "server"
    state = set_up(addon, timers, folder)
    assert state.state == "failed"
    assert state.message.startswith(f"not enough free disk space: the server needs {gb(required)} free at {folder}, "
                                    f"{gb(free)} available"), state.message
    assert not (folder / "venv").exists() and not (folder / "source").exists()


def test_a_folder_that_cannot_be_written_is_named(addon, timers, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    folder = blocker / "server"  # under a regular file: not even root can create it
    state = set_up(addon, timers, folder)
    assert state.state == "failed"
    assert state.message.startswith(f"the Server Folder {folder} is not writable (Not a directory)"), state.message
    assert "full log" not in state.message  # there is nowhere to write one
    assert addon.launch_command == preferences.DEFAULT_COMMAND  # nothing changed


def test_cancel_stops_the_running_set_up(addon, timers, tmp_path):
    addon.server_folder = str(tmp_path / "server")
    assert bpy.ops.zs.setup_server() == {"FINISHED"} and bpy.ops.zs.cancel_setup.poll()
    deadline = time.monotonic() + 120
    while setup_ops.STATE.step < 5:  # inside the venv creation, a child process
        timers.callbacks[0]()
        assert time.monotonic() < deadline and setup_ops.STATE.running, setup_ops.STATE.message
        time.sleep(0.05)
    assert bpy.ops.zs.cancel_setup() == {"FINISHED"}
    timers.run(60)
    assert setup_ops.STATE.state == "failed" and setup_ops.STATE.message.startswith("set-up cancelled")
    assert addon.launch_command == preferences.DEFAULT_COMMAND


def test_a_source_that_is_no_project_is_named(addon, timers, tmp_path):
    addon.server_source = str(tmp_path)  # a folder without pyproject.toml
    state = set_up(addon, timers, tmp_path / "server")
    assert state.state == "failed"
    assert state.message.startswith(f"no server source at {tmp_path}: it has no pyproject.toml"), state.message
    assert server_setup.resolve_source("git+https://example.org/zs.git") == "git+https://example.org/zs.git"


def test_setup_refuses_while_the_started_server_runs(addon, timers, tmp_path):
    addon.server_url = f"http://127.0.0.1:{free_port()}"
    addon.launch_command = server_setup.command_line([sys.executable, "-c", "import time; time.sleep(60)"])
    server_ops.launch(addon)
    try:
        addon.server_folder = str(tmp_path / "server")
        with pytest.raises(RuntimeError, match=r"stop the local server first \(Stop in the ZS panel\)"):
            bpy.ops.zs.setup_server()
        assert not setup_ops.STATE.running
    finally:
        server_ops.stop()


# -------------------------------------------------------------------------- the pieces


def test_pip_output_becomes_progress_and_errors():
    # Lines as pip 23 prints them (the venv's ensurepip version).
    assert server_setup.pip_progress("Collecting diffusers==0.42.1 (from zs-texturing==0.1.0)", 3) == \
        "collecting diffusers==0.42.1 (3 packages so far)"
    assert server_setup.pip_progress("  Downloading https://files.example/diffusers-0.42.1-py3-none-any.whl "
                                     "(6.4 MB)", 3) == "downloading diffusers-0.42.1-py3-none-any.whl (6.4 MB)"
    assert server_setup.pip_progress("Installing collected packages: mpmath, zipp, torch", 9) == \
        "installing 3 packages (this takes a few minutes): mpmath, zipp, torch..."
    assert server_setup.pip_progress("Requirement already satisfied: numpy in ./venv", 3) is None
    full = ["Collecting torch==2.13.0", "ERROR: Could not install packages due to an OSError: [Errno 28] No space "
            "left on device"]
    folder = Path("/tmp")
    assert str(server_setup.pip_failure(full, 1, folder, folder / "setup.log")).startswith(
        "not enough disk space: pip ran out of space")
    offline = ["Looking in indexes: https://pypi.example/simple",
               "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after "
               "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at "
               "0x7f>: Failed to establish a new connection: [Errno -2] Name or service not known')': /simple/torch/",
               "ERROR: Could not find a version that satisfies the requirement torch==2.13.0 (from versions: none)"]
    assert str(server_setup.pip_failure(offline, 1, folder, folder / "setup.log")) == (
        "the package index could not be reached: pip could not download torch==2.13.0 from "
        "https://pypi.example/simple (pip: Failed to establish a new connection: [Errno -2] Name or service not "
        "known). Check the internet connection (and a proxy or pip setting such as PIP_INDEX_URL / pip.conf), then "
        "press Set Up Server again; full log: /tmp/setup.log")
    missing = ["ERROR: Could not find a version that satisfies the requirement torch==99 (from versions: 2.0, 2.1)",
               "ERROR: No matching distribution found for torch==99"]
    assert str(server_setup.pip_failure(missing, 1, folder, folder / "setup.log")).startswith(
        "pip found no version of torch==99 for Python 3.11")


class Drawn:
    """The preferences as draw() sees them, drawing into another layout."""

    def __init__(self, prefs, layout):
        self._prefs, self.layout = prefs, layout

    def __getattr__(self, name):
        return getattr(self._prefs, name)


def test_preferences_draw_the_set_up_box(addon):
    assert {"factor", "text"} <= set(bpy.types.UILayout.bl_rna.functions["progress"].parameters.keys())
    assert addon.server_folder == preferences.DEFAULT_SERVER_FOLDER
    assert Path(addon.server_folder) == preferences.default_data_dir().parent / "zs-texturing-server"
    state = setup_ops.STATE
    for phase, step, message in (("idle", 0, ""), ("running", 6, "collecting torch"), ("failed", 2, "no Python")):
        state.state, state.step, state.message = phase, step, message
        layout = RecordingLayout()
        type(addon).draw(Drawn(addon, layout), bpy.context)
        assert {"server_folder", "python", "server_source", "launch_command", "data_dir"} <= set(layout.props)
        assert ("zs.cancel_setup" in layout.operators) == (phase == "running")
        assert ("zs.setup_server" in layout.operators) == (phase != "running")
        if phase == "running":
            assert "Step 6/7: collecting torch" in layout.labels
        if phase == "failed":
            assert "no Python" in layout.labels
    state.state = "idle"
