"""Server connection: check it, start a local one, stop the one we started.

Nothing here waits on the network in Blender's main thread: a check runs ``health`` (and
``models``, which needs the token) on a helper thread, and a ``bpy.app.timers`` callback
picks up the answer, stores it in :data:`STATUS` (drawn by the panel) and the server's
models, LoRAs and IP-Adapters in :data:`..server_models.CATALOG` (the Model panel's
dropdowns), and redraws.

Start runs the preferences' launch command (default ``zs serve``) as a child process,
without a shell, with ``ZS_PORT`` (and ``ZS_HOST``) taken from the server URL and
``ZS_DATA_DIR`` from the preferences, its output going to a log file; then it keeps
checking until the server answers (loading a model can take a while), the process exits
(the end of its log is shown), or :data:`START_TIMEOUT` passes.
"""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bpy

from .. import preferences, server_models
from ..client import Client, ServerError
from .base import available_when, cancelled, finished

CHECK_TIMEOUT = 5.0  # seconds per request of a check
START_TIMEOUT = 300.0  # seconds for a started server to answer (model loading included)
RETRY_INTERVAL = 1.0  # seconds between checks while a started server comes up


@dataclass
class ServerStatus:
    """What the panel shows. ``state``: "unknown", "checking", "starting", "online",
    "offline" (unreachable) or "error" (reachable but unusable, e.g. token rejected)."""

    state: str = "unknown"
    message: str = ""
    server_model: str = ""  # the server's default model, from /v1/health
    url: str = ""
    catalog: server_models.Catalog | None = None  # what GET /v1/models listed (online only)


STATUS = ServerStatus()
_process: subprocess.Popen | None = None
_log_path: Path | None = None


def check(url: str, token: str | None) -> ServerStatus:
    """Ask the server (blocking; call it off the main thread) -> a new ServerStatus."""
    client = Client(url, token, timeout=CHECK_TIMEOUT)
    try:
        health = client.health()
    except ServerError as exc:
        return ServerStatus("offline", str(exc), url=url)
    model = str(health.get("model") or "")
    try:
        catalog = server_models.Catalog.from_answer(client.models(), url, default=model)
    except ServerError as exc:
        return ServerStatus("error", str(exc), model, url)
    device = health.get("device")
    detail = f"{model} on {device}" if device else model
    return ServerStatus("online", f"{detail}; {health.get('queue_length', 0)} job(s) queued", model, url, catalog)


class _Probe:
    """One check on a helper thread; ``result`` is None until it answered."""

    def __init__(self, url: str, token: str | None):
        self.result: ServerStatus | None = None
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True, name="zs-check")
        self._thread.start()

    def _run(self, url, token):
        self.result = check(url, token)


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _set(status: ServerStatus) -> None:
    STATUS.state, STATUS.message, STATUS.server_model, STATUS.url = status.state, status.message, status.server_model, status.url
    STATUS.catalog = status.catalog
    if status.catalog is not None:  # offline keeps the last lists: the dropdowns still show them
        server_models.remember(status.catalog)


def _watch(prefs, until: float | None) -> None:
    """Check now and keep the answer in STATUS; with ``until`` retry while a started
    server is still coming up. Driven by bpy.app.timers, never blocking.

    The preference values are copied now (the preferences may go away meanwhile); the
    token is resolved again for every try, since a new server writes its token file
    only once it runs."""
    prefs = preferences.Defaults(prefs.server_url, prefs.token, prefs.launch_command, prefs.data_dir)
    url = prefs.server_url
    state = {"probe": _Probe(url, preferences.resolve_token(prefs))}

    def tick():
        probe = state["probe"]
        if probe.result is None:
            return 0.1
        result = probe.result
        starting = until is not None and result.state == "offline"
        if starting and _process is not None and _process.poll() is not None:
            _set(ServerStatus("offline", _exit_message(), url=url))
        elif starting and time.monotonic() < until:
            STATUS.state, STATUS.message = "starting", "waiting for the server to load its model"
            _redraw()
            state["probe"] = _Probe(url, preferences.resolve_token(prefs))
            return RETRY_INTERVAL
        else:
            _set(result)
        _redraw()
        return None  # done: unregister the timer

    bpy.app.timers.register(tick, first_interval=0.1)


def _exit_message() -> str:
    tail = ""
    if _log_path is not None and _log_path.is_file():
        lines = [line for line in _log_path.read_text(errors="replace").splitlines() if line.strip()]
        tail = lines[-1] if lines else ""
    code = _process.returncode if _process is not None else None
    return f"the server process exited (code {code}): {tail or 'no output'}; full log: {_log_path}"


def launch_environment(prefs) -> dict[str, str]:
    """The child's environment: ours plus ZS_HOST / ZS_PORT of the URL, ZS_DATA_DIR."""
    parts = urlsplit(prefs.server_url)
    env = dict(os.environ)
    if parts.port:
        env["ZS_PORT"] = str(parts.port)
    if parts.hostname:
        env["ZS_HOST"] = parts.hostname
    if (prefs.data_dir or "").strip():
        env["ZS_DATA_DIR"] = str(preferences.data_dir(prefs))
    return env


def split_command(command: str) -> list[str]:
    """The launch command -> its arguments. Windows keeps backslashes; the double quotes
    around a path with spaces (as Set Up Server writes it) are dropped there too."""
    if os.name != "nt":
        return shlex.split(command)
    args = shlex.split(command, posix=False)
    return [arg[1:-1] if len(arg) > 1 and arg[0] == arg[-1] == '"' else arg for arg in args]


def launch(prefs) -> subprocess.Popen:
    """Start the launch command -> the process. Raises ValueError with a clear message."""
    global _process, _log_path
    host = urlsplit(prefs.server_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the server URL {prefs.server_url} is not on this computer; start that server "
                         f"there, or set the URL to http://127.0.0.1:8765")
    if _process is not None and _process.poll() is None:
        raise ValueError(f"a local server started from Blender is already running (pid {_process.pid})")
    args = split_command(prefs.launch_command or preferences.DEFAULT_COMMAND)
    if not args:
        raise ValueError("the launch command in the add-on preferences is empty")
    _log_path = Path(tempfile.gettempdir()) / "zs-serve.log"
    log = open(_log_path, "wb")
    try:
        # No pipes: a child writing into a pipe nobody reads would block once it is full.
        _process = subprocess.Popen(args, env=launch_environment(prefs), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ValueError(f"cannot run {args[0]!r} ({exc.strerror or exc}): set the server up once with Set Up "
                         f"Server in the add-on preferences (Edit > Preferences > Add-ons > ZS Texturing), which fills "
                         f"in the Launch Command; or, from a terminal in the ZS Texturing folder, `make demo` builds "
                         f".venv: then put the full path of its command there, e.g. "
                         f"/path/to/zs-texturing/.venv/bin/zs serve") from None
    finally:
        log.close()  # the child has its own handle
    return _process


def stop() -> bool:
    """Terminate the server this session started -> whether there was one."""
    global _process
    process, _process = _process, None
    if process is None or process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
    return True


atexit.register(stop)  # a server Blender started goes away with Blender


def started_here() -> bool:
    return _process is not None and _process.poll() is None


class ZS_OT_check_server(bpy.types.Operator):
    """Check that the ZS server answers and accepts the token"""

    bl_idname = "zs.check_server"
    bl_label = "Connect"
    bl_options = {"REGISTER"}

    def execute(self, context):
        prefs = preferences.get(context)
        STATUS.state, STATUS.message, STATUS.url = "checking", "", prefs.server_url
        _watch(prefs, until=None)
        return {"FINISHED"}


def _startable() -> bool:
    return not started_here()


class ZS_OT_start_server(available_when(_startable), bpy.types.Operator):
    """Start a local ZS server with the launch command of the add-on preferences"""

    bl_idname = "zs.start_server"
    bl_label = "Start Local Server"

    def execute(self, context):
        prefs = preferences.get(context)
        try:
            process = launch(prefs)
        except ValueError as exc:
            return cancelled(self, str(exc))
        STATUS.state, STATUS.message, STATUS.url = "starting", f"pid {process.pid}, log {_log_path}", prefs.server_url
        _watch(prefs, until=time.monotonic() + START_TIMEOUT)
        return finished(self, f"starting the ZS server (pid {process.pid}); log: {_log_path}")


class ZS_OT_stop_server(available_when(started_here), bpy.types.Operator):
    """Stop the local ZS server started from this Blender session"""

    bl_idname = "zs.stop_server"
    bl_label = "Stop Local Server"

    def execute(self, context):
        stop()
        STATUS.state, STATUS.message = "offline", "stopped"
        return {"FINISHED"}


classes = (ZS_OT_check_server, ZS_OT_start_server, ZS_OT_stop_server)
