"""Add-on preferences: where the sampling server is and how to start a local one.

The preferences belong to the add-on module Blender enabled. Installed as an extension
that module is ``bl_ext.<repo>.zs_texturing`` and this file lives in its sub-package
``blender_addon``; registered directly (tests, scripts: ``blender_addon.register()``) the
add-on module is ``blender_addon`` itself. :data:`ADDON_ID` is derived from ``__package__``
so both work without hard-coding the id.

When the add-on is registered but not enabled through Blender's preferences (the direct
case), there is no preferences instance: :func:`get` then answers :class:`Defaults`.
Imports: bpy and the standard library only.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import StringProperty

from .client import DEFAULT_URL

# "bl_ext.user_default.zs_texturing.blender_addon" -> "bl_ext.user_default.zs_texturing";
# "blender_addon" (registered directly) stays "blender_addon".
_parent, _, _leaf = __package__.rpartition(".")
ADDON_ID = _parent or _leaf

DEFAULT_COMMAND = "zs serve"
TOKEN_FILE = "token"


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

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "server_url")
        layout.prop(self, "token")
        layout.prop(self, "launch_command")
        layout.prop(self, "data_dir")
        token_path = token_file(self)
        note = f"Empty token: read from {token_path}" if token_path else "Empty token: none is sent"
        layout.label(text=note, icon="INFO")


@dataclass
class Defaults:
    """The preference values when the add-on has no preferences instance (registered
    directly, not enabled through Blender's preferences)."""

    server_url: str = DEFAULT_URL
    token: str = ""
    launch_command: str = DEFAULT_COMMAND
    data_dir: str = ""


def get(context=None):
    """The add-on's preferences (ZS_AddonPreferences), or :class:`Defaults` without them."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    if addon is None or addon.preferences is None:
        return Defaults()
    return addon.preferences


def default_data_dir() -> Path:
    """The server's default data folder (docs/protocol.md): XDG on Linux, Application
    Support on macOS, LOCALAPPDATA on Windows."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "zs-texturing"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "zs-texturing"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "zs-texturing"


def data_dir(prefs) -> Path:
    """The data folder the preferences name (Blender's ``//`` paths resolved), else the default."""
    text = (prefs.data_dir or "").strip()
    return Path(bpy.path.abspath(text)) if text else default_data_dir()


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
