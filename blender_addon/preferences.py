"""Add-on preferences: where the sampling server is and how to start a local one.

The preferences belong to the add-on module Blender enabled. Installed as an extension
that module is ``bl_ext.<repo>.zs_texturing`` and this file lives in its sub-package
``blender_addon``; registered directly (tests, scripts: ``blender_addon.register()``) the
add-on module is ``blender_addon`` itself. :data:`ADDON_ID` is derived from ``__package__``
so both work without hard-coding the id.

When the add-on is registered but not enabled through Blender's preferences (the direct
case), there is no preferences instance: :func:`get` then answers :class:`Defaults`.

The "Set up a local server" box (Server Folder, Python, Server Source, Set Up Server)
drives ``operators/server_setup.py``, which fills in the Launch Command once it is done.
Imports: bpy and the standard library only.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import server_setup
from .client import DEFAULT_URL

# "bl_ext.user_default.zs_texturing.blender_addon" -> "bl_ext.user_default.zs_texturing";
# "blender_addon" (registered directly) stays "blender_addon".
_parent, _, _leaf = __package__.rpartition(".")
ADDON_ID = _parent or _leaf

DEFAULT_COMMAND = "zs serve"
TOKEN_FILE = "token"


def default_data_dir() -> Path:
    """The server's default data folder (docs/protocol.md): XDG on Linux, Application
    Support on macOS, LOCALAPPDATA on Windows."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "zs-texturing"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "zs-texturing"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "zs-texturing"


# Next to the server's data folder, e.g. ~/.local/share/zs-texturing-server on Linux.
DEFAULT_SERVER_FOLDER = str(server_setup.default_folder(default_data_dir()))


class ZS_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    server_url: StringProperty(
        name="Server URL", default=DEFAULT_URL,
        description="Address of the ZS sampling server (`zs serve` listens on http://127.0.0.1:8765)")
    token: StringProperty(
        name="Token", default="", subtype="PASSWORD",
        description="Bearer token of the server. Empty: read <data folder>/token, which a local "
                    "server writes on its first start")
    launch_command: StringProperty(
        name="Launch Command", default=DEFAULT_COMMAND,
        description="Command that starts a local server (run without a shell; the port of the "
                    "server URL and the data folder are passed as ZS_PORT / ZS_DATA_DIR)")
    data_dir: StringProperty(
        name="Data Folder", default="", subtype="DIR_PATH",
        description="The server's data folder (jobs, results, token). Empty: the server's default "
                    "user data folder")
    server_folder: StringProperty(
        name="Server Folder", default=DEFAULT_SERVER_FOLDER, subtype="DIR_PATH",
        description="Where Set Up Server installs the sampling server (a Python environment of a few GB) "
                    "and writes setup.log")
    python: StringProperty(
        name="Python", default="", subtype="FILE_PATH",
        description="The Python 3.11 executable the server runs on. Empty: python3.11 / python3 on PATH "
                    "(py -3.11 on Windows), else Blender's own Python")
    server_source: StringProperty(
        name="Server Source", default="",
        description="What Set Up Server installs. Empty: the server source this extension ships; else the "
                    "ZS Texturing project folder, or anything pip install takes (e.g. a git URL)")

    def draw(self, context):
        layout = self.layout
        _draw_setup(layout.box(), self)
        layout.prop(self, "server_url")
        layout.prop(self, "token")
        layout.prop(self, "launch_command")
        layout.prop(self, "data_dir")
        token_path = token_file(self)
        note = f"Empty token: read from {token_path}" if token_path else "Empty token: none is sent"
        layout.label(text=note, icon="INFO")


def _draw_setup(box, prefs) -> None:
    """The set-up box: folder, Python, source, the button, then progress or the outcome."""
    from .operators import server_setup as setup_operator  # operators import this module

    state = setup_operator.STATE
    box.label(text="Set up a local server (once; needs internet and a few GB)", icon="CONSOLE")
    column = box.column()
    column.enabled = not state.running
    column.prop(prefs, "server_folder")
    column.prop(prefs, "python")
    column.prop(prefs, "server_source")
    row = box.row()
    if state.running:
        row.operator("zs.cancel_setup", text="Cancel", icon="X")
        box.progress(factor=state.factor, text=f"Step {state.step}/{state.count}: {state.message}"[:120])
        return
    row.scale_y = 1.3
    row.operator("zs.setup_server", text="Set Up Server", icon="IMPORT")
    if state.state in ("done", "failed"):
        icon = "ERROR" if state.state == "failed" else "CHECKMARK"
        for index, line in enumerate(textwrap.wrap(state.message, 90) or [""]):
            box.label(text=line, icon=icon if index == 0 else "BLANK1")


@dataclass
class Defaults:
    """The preference values when the add-on has no preferences instance (registered
    directly, not enabled through Blender's preferences)."""

    server_url: str = DEFAULT_URL
    token: str = ""
    launch_command: str = DEFAULT_COMMAND
    data_dir: str = ""
    server_folder: str = DEFAULT_SERVER_FOLDER
    python: str = ""
    server_source: str = ""


def get(context=None):
    """The add-on's preferences (ZS_AddonPreferences), or :class:`Defaults` without them."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    if addon is None or addon.preferences is None:
        return Defaults()
    return addon.preferences


def data_dir(prefs) -> Path:
    """The data folder the preferences name (Blender's ``//`` paths resolved), else the default."""
    text = (prefs.data_dir or "").strip()
    return Path(bpy.path.abspath(text)) if text else default_data_dir()


def server_folder(prefs) -> Path:
    """The Server Folder the preferences name (Blender's ``//`` paths resolved), else the default."""
    text = (getattr(prefs, "server_folder", "") or "").strip()
    return Path(bpy.path.abspath(text) if text.startswith("//") else text or DEFAULT_SERVER_FOLDER).expanduser()


def token_file(prefs) -> Path | None:
    """Where an empty token field reads the token from (None when the URL is not local:
    a remote server's token cannot be in this machine's data folder)."""
    from urllib.parse import urlsplit

    host = urlsplit(prefs.server_url or DEFAULT_URL).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return data_dir(prefs) / TOKEN_FILE


def resolve_token(prefs) -> str | None:
    """The token to send: the preferences' field, else the local server's token file, else None."""
    token = (prefs.token or "").strip()
    if token:
        return token
    path = token_file(prefs)
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except OSError:  # no file yet (server never started) or unreadable: send none, 401 explains
        return None


classes = (ZS_AddonPreferences,)
