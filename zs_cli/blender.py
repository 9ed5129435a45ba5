"""Running the Blender flow from the ``zs`` command: Blender's Python module (``bpy``)
in this process, its console lines kept out of the terminal, and the sampling backend the
flow calls (zs_core in this process, :mod:`zs_cli.local`, or a server)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .progress import EventBars, StepBar

BLENDER_LOG = "blender.log"
SHORT_LOG = 4096  # bytes of Blender's log shown on stderr instead of kept, for a run that made no output
NO_TOKEN_HINT = ("set ZS_TOKEN or pass --token (the server prints where its token file is when it starts; "
                 "`zs serve` on this machine writes it into its data folder)")


def bpy_available() -> bool:
    try:
        return importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        return False


def batch():
    """``blender_addon.batch`` (needs ``bpy``), or a ValueError saying how to install it."""
    try:
        from blender_addon import batch as module
    except ModuleNotFoundError as exc:
        if exc.name != "bpy":
            raise
        raise ValueError("source: a .blend needs Blender's Python module; install it with "
                         "pip install -e '.[blender]' (bpy 5.0.1, Python 3.11)") from None
    return module


@contextlib.contextmanager
def log_to(out: Path):
    """Blender's console lines go to ``out/blender.log`` instead of the terminal meanwhile.

    Blender writes them from C to the process's stdout (fd 1): a "Saved:" line for every
    temporary pass file (three per view or frame), the files it reads and saves. Every line of
    ours, and the progress bars, go to stderr, so they stay. The log is written to a
    temporary file and moved into ``out`` at the end when ``out`` exists (a run stopped
    by bad input creates no output folder); its path is named on stderr. A short log of a
    run that stopped before creating ``out`` is written to stderr instead of kept."""
    _flush_stdout()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to redirect (closed): Blender's lines go nowhere anyway
        yield
        return
    handle, temporary = tempfile.mkstemp(prefix="zs-blender-", suffix=".log")
    os.dup2(handle, 1)
    os.close(handle)
    try:
        yield
    finally:
        _flush_stdout()
        os.dup2(saved, 1)
        os.close(saved)
        _keep_log(Path(temporary), out)


def _keep_log(path: Path, out: Path) -> None:
    if out.is_dir():
        try:
            path = Path(shutil.move(str(path), out / BLENDER_LOG))
        except OSError:
            pass  # kept where it is; named below
    elif path.stat().st_size <= SHORT_LOG:  # a run stopped early: show its few lines, keep no file
        sys.stderr.write(path.read_text(errors="replace"))
        path.unlink()
        return
    print(f"Blender's log: {path}", file=sys.stderr)


def _flush_stdout() -> None:
    """Python's and C's stdout buffers out, so no line lands on the wrong side of a switch."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to ask (Windows): Python's flush only
        pass


def run_with_bar(components, request, passes, out) -> dict:
    """zs_core.run.run_job in this process with a progress bar -> the metrics."""
    from zs_core import run

    bar = StepBar(request.steps)
    try:
        return run.run_job(components, request, passes, out, progress=bar)
    finally:
        bar.close()


def build_extension(out: Path) -> Path:
    """The extension's zip, built into ``out`` by Blender's own extension tool (the one
    ``blender --command extension build`` runs, shipped inside the bpy module) -> its path."""
    import subprocess

    import bpy

    scripts = Path(bpy.utils.system_resource("SCRIPTS"))
    tool = scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    tags = scripts / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    source = Path(__file__).resolve().parents[1]
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.zip"))
    done = subprocess.run([sys.executable, str(tool), "build", "--valid-tags", str(tags), "--source-dir", str(source),
                           "--output-dir", str(out)], capture_output=True, text=True, timeout=300)
    built = sorted(set(out.glob("*.zip")) - before) or sorted(out.glob("*.zip"))
    if done.returncode != 0 or not built:
        raise ValueError(f"extension: Blender's extension tool failed: {(done.stdout + done.stderr).strip()[-1500:]}")
    return built[-1]


def local_token() -> str | None:
    """ZS_TOKEN, else the token file of the local server's data folder, else None."""
    if os.environ.get("ZS_TOKEN"):
        return os.environ["ZS_TOKEN"]
    from server.config import TOKEN_FILE, Settings

    path = Settings.from_env().data_dir / TOKEN_FILE
    return path.read_text().strip() if path.is_file() else None


@contextlib.contextmanager
def sampling_backend(command: str, *, local=None, server: str | None = None, token: str | None = None):
    """Yields the Blender flow's backend keywords: the server at ``server`` (with ``token``),
    else ``local`` (a :class:`~zs_cli.local.LocalSampler`); progress bars for the pass
    render and the server's steps (the in-process sampler has its own), closed at the end
    also when the run fails."""
    bars = EventBars(command)
    try:
        if server:
            yield dict(server=server, token=token, progress=bars)
        else:
            yield dict(sampler=local.sample, progress=bars)
    finally:
        bars.close()
