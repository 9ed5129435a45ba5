"""Set Up Server (add-on preferences): a local sampling server installed into the Server
Folder, then the preferences' Launch Command (and an empty Data Folder) pointed at it.

The steps (``blender_addon/server_setup.py``) take minutes, so they run on a helper
thread; a ``bpy.app.timers`` callback copies their progress into :data:`STATE` (drawn by
the preferences and the panel), and once they end writes the preferences here, on the
main thread. Nothing waits in Blender's main thread.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass

import bpy

from .. import preferences, server_setup
from . import server
from .base import available_when, cancelled, finished

POLL_INTERVAL = 0.2  # seconds between looks at the helper thread


@dataclass
class SetupState:
    """What the preferences and the panel show. ``state``: "idle", "running", "done" or
    "failed"; ``step`` of ``count`` with the latest ``message`` (the error once failed)."""

    state: str = "idle"
    step: int = 0
    count: int = len(server_setup.STEPS)
    message: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def factor(self) -> float:
        """The progress bar: the steps done, plus half of the running one."""
        done = self.step if self.state == "done" else max(self.step - 0.5, 0.0)
        return min(max(done / max(self.count, 1), 0.0), 1.0)


STATE = SetupState()
_setup: server_setup.ServerSetup | None = None


def _redraw() -> None:
    """The preferences window and the ZS panel show the state."""
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "VIEW_3D"):
                area.tag_redraw()


def _apply(installed: server_setup.Installed, context=None) -> str:
    """Point the preferences at the installed server -> what changed, for the message."""
    prefs = preferences.get(context)
    if isinstance(prefs, preferences.Defaults):  # registered directly: nowhere to keep it
        return f"set the Launch Command to {installed.launch_command}"
    prefs.launch_command = installed.launch_command
    changed = f"Launch Command set to {installed.launch_command}"
    if not (prefs.data_dir or "").strip():
        prefs.data_dir = str(installed.data_dir)
        changed += f", Data Folder to {installed.data_dir}"
    return changed


def start(folder: str, python: str = "", source: str = "") -> server_setup.ServerSetup:
    """Run the set-up into ``folder`` on a helper thread, followed by a timer -> the set-up."""
    global _setup
    STATE.state, STATE.step, STATE.message = "running", 0, "starting"
    outcome: dict = {}

    def progress(index: int, count: int, message: str) -> None:  # helper thread: hand over only
        outcome["progress"] = (index, count, message)

    def work() -> None:
        try:
            outcome["installed"] = _setup_now.run()
        except server_setup.SetupError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # a bug must still end the "running" state with a message
            outcome["error"] = f"the set-up stopped unexpectedly: {type(exc).__name__}: {exc}"

    _setup = _setup_now = server_setup.ServerSetup(folder, python=python, source=source, progress=progress)
    thread = threading.Thread(target=work, daemon=True, name="zs-setup-server")
    thread.start()

    def tick():
        global _setup
        if "progress" in outcome:
            STATE.step, STATE.count, STATE.message = outcome["progress"]
        if thread.is_alive():
            _redraw()
            return POLL_INTERVAL
        _setup = None
        if "installed" in outcome:
            installed = outcome["installed"]
            STATE.state, STATE.step = "done", STATE.count
            STATE.message = (f"server set up in {installed.seconds / 60:.1f} min; {_apply(installed)}. Press Start in "
                             f"the ZS panel (3D Viewport > N > ZS), then Connect")
        else:
            STATE.state, STATE.message = "failed", outcome.get("error", "the set-up ended without a result")
        _redraw()
        return None

    # persistent: opening another .blend meanwhile must not drop the timer (the set-up goes on).
    bpy.app.timers.register(tick, first_interval=POLL_INTERVAL, persistent=True)
    return _setup_now


def cancel() -> None:
    """Stop a running set-up (its pip is terminated)."""
    if _setup is not None:
        _setup.cancel()


atexit.register(cancel)  # no pip left running after Blender quits


def _idle() -> bool:
    return not STATE.running


class ZS_OT_setup_server(available_when(_idle), bpy.types.Operator):
    """Install the ZS sampling server (a few GB of Python packages) into the Server Folder; set the Launch Command"""

    bl_idname = "zs.setup_server"
    bl_label = "Set Up Server"

    def execute(self, context):
        prefs = preferences.get(context)
        folder = preferences.server_folder(prefs)
        if server.started_here():  # its files are in use (and locked on Windows)
            return cancelled(self, "stop the local server first (Stop in the ZS panel), then set it up again")
        start(str(folder), python=_path(getattr(prefs, "python", "")),
              source=_path(getattr(prefs, "server_source", "")))
        return finished(self, f"setting up the ZS server in {folder} (a few minutes); progress in the add-on "
                              f"preferences")


class ZS_OT_cancel_setup(available_when(lambda: STATE.running), bpy.types.Operator):
    """Stop the running server set-up"""

    bl_idname = "zs.cancel_setup"
    bl_label = "Cancel Set-Up"

    def execute(self, context):
        cancel()
        return {"FINISHED"}


def _path(text: str) -> str:
    """A preference path with Blender's ``//`` (relative to the .blend) resolved; other text as is."""
    text = (text or "").strip()
    return bpy.path.abspath(text) if text.startswith("//") else text


classes = (ZS_OT_setup_server, ZS_OT_cancel_setup)
