"""Setting up a local sampling server from Blender: a virtual environment in a folder the
artist picks, with the project installed into it by pip.

:class:`ServerSetup` runs the steps of :data:`STEPS` in order and reports each through a
callback ``(step_index, step_count, message)``; every failure is a :class:`SetupError`
whose message says what is wrong and what to do, and where the full log
(``<folder>/setup.log``) is once the folder exists. It blocks (minutes: pip downloads
torch), so the operator (``operators/server_setup.py``) runs it on a helper thread.

Layout of the folder: ``setup.log``, ``source/`` (a copy of the project's source that pip
builds from, so the build never writes into the extension or a repository), ``venv/``.
Running the set-up again into the same folder reuses a working venv (pip replaces the
project in it) and recreates a broken one.

Pure logic: the standard library only, no bpy.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PYTHON_VERSION = (3, 11)  # pyproject's requires-python; Blender 4.2-5.0 bundle 3.11 too
# Free space the install needs: torch alone is about 0.8 GB installed as the CPU build and
# 4-5 GB with the CUDA libraries pip takes on Linux / Windows, plus diffusers, transformers,
# scipy, OpenCV (about 0.6 GB) and pip's downloads while it installs.
REQUIRED_BYTES = 6 * 1024 ** 3
# The folder holding the add-on package: the repository root (pyproject.toml) in a
# checkout, the extension's own folder once installed (the zip ships the server source).
SHIPPED_SOURCE = Path(__file__).resolve().parents[1]
LOG_NAME = "setup.log"
PYTHON_DOWNLOAD = "https://www.python.org/downloads/"
PROBE_TIMEOUT = 30.0  # seconds for a candidate interpreter to print its version

STEPS = ("Preparing the folder", "Finding Python 3.11", "Checking free disk space", "Copying the server source",
         "Creating the virtual environment", "Installing packages with pip", "Checking the install")

# What the candidate interpreters run: version, real executable, venv + ensurepip (the
# venv module of Debian's python3 without python3-venv has no ensurepip, so no pip).
_PROBE = ("import sys\nprint('%d.%d' % sys.version_info[:2])\nprint(sys.executable)\n"
          "try:\n    import venv, ensurepip\n    print('venv')\nexcept ImportError:\n    print('no venv')\n")
# What a working install imports: the server, the sampling core with torch and diffusers, the CLI.
_CHECK = "import server.app, zs_core.sampler, zs_cli"

Progress = Callable[[int, int, str], None]


class SetupError(Exception):
    """A set-up that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Interpreter:
    """A Python that fits: how it was found, its executable and version."""

    label: str
    executable: str
    version: str


@dataclass(frozen=True)
class Installed:
    """A finished set-up: what the preferences need to start the server."""

    folder: Path
    venv: Path
    python: Path
    zs: Path
    launch_command: str
    data_dir: Path
    log: Path
    seconds: float


def default_folder(data_dir: Path) -> Path:
    """The suggested Server Folder, next to the server's default data folder (``data_dir``)."""
    return data_dir.parent / "zs-texturing-server"


def venv_executables(venv: Path) -> tuple[Path, Path]:
    """(python, zs) inside ``venv`` on this platform."""
    if os.name == "nt":
        return venv / "Scripts" / "python.exe", venv / "Scripts" / "zs.exe"
    return venv / "bin" / "python", venv / "bin" / "zs"


def command_line(args: list[str]) -> str:
    """``args`` as one launch command that operators/server.py's ``launch`` splits back."""
    if os.name == "nt":
        return subprocess.list2cmdline(args)
    return shlex.join(args)


def child_environment() -> dict[str, str]:
    """Our environment for the interpreters we run, minus what would make them another
    Python's (Blender may run with PYTHONHOME / PYTHONPATH of its own)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}
    # pip: no questions, no user-site install (refused in a venv), plain lines to parse.
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PIP_NO_INPUT="1", PIP_USER="0",
               PIP_PROGRESS_BAR="off", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console pops up from Blender


# --------------------------------------------------------------------------- Python


def python_candidates(preferred: str) -> list[tuple[str, list[str] | None]]:
    """(label, command or None when not found) in the order they are tried. A Python
    preference is the only candidate: the artist chose it, another one would surprise."""
    if preferred.strip():
        return [(f"the Python preference ({preferred.strip()})", [preferred.strip()])]
    found: list[tuple[str, list[str] | None]] = []
    if os.name == "nt":
        launcher = shutil.which("py")
        found.append(("py -3.11", [launcher, "-3.11"] if launcher else None))
    for name in ("python3.11", "python3") + (("python",) if os.name == "nt" else ()):
        path = shutil.which(name)
        found.append((f"{name} on PATH" + (f" ({path})" if path else ""), [path] if path else None))
    # Blender's own interpreter; without a bundled Python sys.executable may be Blender itself.
    own = sys.executable or ""
    if Path(own).name.lower().startswith("python"):
        found.append((f"Blender's Python ({own})", [own]))
    return found


def probe(command: list[str]) -> tuple[str | None, str]:
    """Run ``command`` on the probe -> (its executable if it fits, else None; what it is)."""
    try:
        done = subprocess.run([*command, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              env=child_environment(), stdin=subprocess.DEVNULL, creationflags=_NO_WINDOW)
    except FileNotFoundError:
        return None, "not found"
    except subprocess.TimeoutExpired:
        return None, f"did not answer within {PROBE_TIMEOUT:g} s"
    except OSError as exc:
        return None, f"cannot run it ({exc.strerror or exc})"
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < 3 or not re.fullmatch(r"\d+\.\d+", lines[0].strip()):
        said = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        return None, f"not a working Python (exit code {done.returncode}: {said[:200]})"
    version = lines[0].strip()
    if tuple(int(part) for part in version.split(".")) != PYTHON_VERSION:
        return None, f"version {version}"
    if lines[2].strip() != "venv":
        return None, f"version {version} but no venv module (or no ensurepip)"
    # The real executable (a launcher such as pyenv's shim or `py` is only the way in).
    return lines[1].strip() or command[0], f"version {version}"


def find_python(preferred: str = "", log: Callable[[str], None] = lambda line: None) -> Interpreter:
    """The first candidate that is a Python 3.11 with venv -> it; else SetupError naming each."""
    tried = []
    for label, command in python_candidates(preferred):
        executable, what = probe(command) if command else (None, "not found")
        log(f"python candidate {label}: {what}")
        if executable is not None:
            return Interpreter(label, executable, what.removeprefix("version "))
        tried.append(f"{label}: {what}")
    wanted = "%d.%d" % PYTHON_VERSION
    advice = (f"set the Python preference to a Python {wanted} (python.exe / python{wanted}), or clear it to let "
              f"the set-up search" if preferred.strip() else
              f"install Python {wanted} from {PYTHON_DOWNLOAD} (on Windows tick \"Add python.exe to PATH\"), or set "
              f"the Python preference to the python{wanted} executable")
    raise SetupError(f"no suitable Python {wanted} found; tried: {'; '.join(tried) or 'nothing'}. To fix: "
                     f"{advice}, then press Set Up Server again")


# ----------------------------------------------------------------------------- disk


def nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _gb(count: int) -> str:
    return f"{count / 1024 ** 3:.1f} GB"


def check_disk(folder: Path) -> str:
    """Raise SetupError unless the folder's disk has REQUIRED_BYTES free (a venv there
    already counts as free: it is reused or replaced) -> a line for the log."""
    required = REQUIRED_BYTES  # read at call time: a test may lower or raise it
    free = shutil.disk_usage(nearest_existing(folder)).free
    reusable = tree_bytes(folder / "venv") if (folder / "venv").is_dir() else 0
    if free + reusable < required:
        raise SetupError(f"not enough free disk space: the server needs {_gb(required)} free at {folder}, "
                         f"{_gb(free + reusable)} available. Free some space or choose a Server Folder on another "
                         f"disk, then press Set Up Server again")
    return f"disk: {_gb(free)} free at {folder} (+{_gb(reusable)} in the old venv), {_gb(required)} needed"


# --------------------------------------------------------------------------- source


def resolve_source(text: str) -> Path | str:
    """The Server Source preference -> a local folder to copy, or a pip requirement
    (git URL, wheel, sdist, name) as given. Empty: what the extension ships."""
    text = text.strip()
    if not text:
        return SHIPPED_SOURCE
    path = Path(text).expanduser()
    return path if path.is_dir() else text


def source_entries(source: Path) -> list[str]:
    """The top-level entries of a project folder that pip needs: pyproject.toml, its
    readme and its packages (pyproject's list, else every top-level package)."""
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file():
        shipped = " (the extension ships it since 0.1.0; reinstall the extension)" if source == SHIPPED_SOURCE else ""
        raise SetupError(f"no server source at {source}: it has no pyproject.toml{shipped}. Set the Server Source "
                         f"preference to the ZS Texturing project folder or its git URL")
    try:
        meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SetupError(f"cannot read {pyproject}: {exc}") from None
    entries = ["pyproject.toml"]
    readme = meta.get("project", {}).get("readme")
    readme = readme.get("file") if isinstance(readme, dict) else readme
    if isinstance(readme, str):
        entries.append(readme)
    packages = meta.get("tool", {}).get("setuptools", {}).get("packages")
    if isinstance(packages, list):
        entries += sorted({name.split(".")[0] for name in packages})
    else:
        entries += sorted(p.name for p in source.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    missing = [name for name in entries if not (source / name).exists()]
    if missing:
        raise SetupError(f"the server source at {source} is incomplete: {', '.join(missing)} missing. Set the "
                         f"Server Source preference to a complete ZS Texturing project folder or its git URL")
    return entries


def copy_source(source: Path, dest: Path) -> int:
    """Replace ``dest`` with the project files of ``source`` -> how many files."""
    entries = source_entries(source)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for name in entries:
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, ignore=ignore)
        else:
            shutil.copy2(source / name, dest / name)
    return sum(1 for path in dest.rglob("*") if path.is_file())


# ------------------------------------------------------------------------------ pip


# Signs of an unreachable index in pip's output, the most telling first (shown as the cause).
_NETWORK = ("failed to establish a new connection", "temporary failure in name resolution", "name or service not known",
            "nodename nor servname", "getaddrinfo failed", "network is unreachable", "no route to host",
            "connection refused", "connecttimeouterror", "read timed out", "connection reset", "proxyerror",
            "sslerror", "max retries exceeded", "newconnectionerror", "connection broken by", "could not fetch url")
_NOT_FOUND = re.compile(r"(?:Could not find a version that satisfies the requirement|No matching distribution "
                        r"found for) (\S+)(.*)")
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")
_LOOKED_AT = re.compile(r"^\s*(?:Collecting|Processing) ")


def pip_progress(line: str, collected: int) -> str | None:
    """A line of pip's output -> what to show of it (None: nothing to show). ``collected``:
    the packages pip has looked at so far (its "Collecting" and "Processing" lines)."""
    text = re.sub(r" \(from [^)]*\)", "", line.strip())  # "(from diffusers==0.42.1->zs-texturing==0.1.0)"
    if match := _COLLECTING.match(text):
        return f"collecting {match.group(1)} ({collected} packages so far)"
    if text.startswith("Installing build dependencies"):
        return "installing build dependencies"
    for prefix, shown in (("Downloading ", "downloading "), ("Using cached ", "cached: "),
                          ("Processing ", "collecting "), ("Building wheel for ", "building ")):
        if text.startswith(prefix):  # "Downloading https://.../name.whl (4.2 MB)" -> "downloading name.whl (4.2 MB)"
            first, _, tail = text[len(prefix):].partition(" ")
            name = first.rstrip("/").rsplit("/", 1)[-1]
            counted = f" ({collected} packages so far)" if prefix == "Processing " else ""
            return f"{shown}{name} {tail}".strip() + counted
    if text.startswith("Installing collected packages:"):
        names = [name.strip() for name in text.partition(":")[2].split(",") if name.strip()]
        return f"installing {len(names)} packages (this takes a few minutes): {', '.join(names[:4])}..."
    if text.startswith("Successfully installed"):
        return f"installed {len(text.split()) - 2} packages"
    return None


def _network_cause(lines: list[str], lowered: list[str]) -> str | None:
    """The most telling network error in pip's output, cut out of its line, or None."""
    for pattern in _NETWORK:
        for line, low in zip(lines, lowered):
            if (at := low.find(pattern)) >= 0:
                return re.split(r"['\")]", line[at:], maxsplit=1)[0].strip()[:120]
    return None


def pip_failure(lines: list[str], code: int, folder: Path, log: Path) -> SetupError:
    """pip's output of a failed install -> a SetupError that says what went wrong."""
    note = f"; full log: {log}"
    lowered = [line.lower() for line in lines]
    if any("no space left on device" in line or "errno 28" in line for line in lowered):
        free = shutil.disk_usage(nearest_existing(folder)).free
        return SetupError(f"not enough disk space: pip ran out of space while installing (the server needs "
                          f"{_gb(REQUIRED_BYTES)} free at {folder}, {_gb(free)} available now; pip also unpacks into "
                          f"{tempfile.gettempdir()}). Free some space, then press Set Up Server again{note}")
    package = None
    for line in lines:
        if match := _NOT_FOUND.search(line):
            package = match.group(1)
            break
    if package is None:
        collecting = [match.group(1) for line in lines if (match := _COLLECTING.match(line))]
        package = collecting[-1] if collecting else None
    network = _network_cause(lines, lowered)
    versions_none = any("(from versions: none)" in line for line in lines)
    if network or versions_none:
        # pip names the index only when it is not PyPI's.
        index = next((line.partition(":")[2].strip() for line in lines if "Looking in indexes:" in line),
                     "https://pypi.org/simple")
        cause = f" (pip: {network})" if network else ""
        return SetupError(f"the package index could not be reached: pip could not download "
                          f"{package or 'the packages'} from {index}{cause}. Check the internet connection (and a "
                          f"proxy or pip setting such as PIP_INDEX_URL / pip.conf), then press Set Up Server again"
                          f"{note}")
    if package is not None and any(_NOT_FOUND.search(line) for line in lines):
        return SetupError(f"pip found no version of {package} for Python {'%d.%d' % PYTHON_VERSION} on this "
                          f"platform; set the Server Source preference to a version that fits{note}")
    if any("permission denied" in line or "errno 13" in line for line in lowered):
        return SetupError(f"the Server Folder {folder} is not writable (pip: permission denied); choose a folder "
                          f"you can write to{note}")
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    last = errors[-1] if errors else next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    return SetupError(f"pip install failed (exit code {code}): {last[:300]}{note}")


# ------------------------------------------------------------------------------ the set-up


class ServerSetup:
    """One set-up into ``folder``: :meth:`run` the steps (blocking), :meth:`cancel` from
    another thread. ``python`` / ``source``: the Python and Server Source preferences."""

    def __init__(self, folder: Path | str, *, python: str = "", source: str = "",
                 progress: Progress | None = None):
        self.folder = Path(folder).expanduser().absolute()
        self.python, self.source = python, source
        self.progress = progress or (lambda index, count, message: None)
        self.venv = self.folder / "venv"
        self.log_path = self.folder / LOG_NAME
        self._log = None
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._cancelled = False
        self._step = 0

    # -- reporting

    def _report(self, message: str) -> None:
        self._write(f"[{self._step}/{len(STEPS)}] {message}")
        self.progress(self._step, len(STEPS), message)

    def _begin(self, index: int) -> None:
        if self._cancelled:
            raise SetupError(f"set-up cancelled; full log: {self.log_path}")
        self._step = index
        self._report(STEPS[index - 1])

    def _write(self, line: str) -> None:
        if self._log is not None:
            try:
                self._log.write(line.rstrip("\n") + "\n")
                self._log.flush()
            except OSError:  # a full disk must not hide the real error
                pass

    def _error(self, message: str) -> SetupError:
        if self._log is not None and "full log:" not in message:
            message = f"{message}; full log: {self.log_path}"
        return SetupError(message)

    # -- child processes

    def _run(self, args: list[str], on_line: Callable[[str], None] | None = None) -> tuple[int, list[str]]:
        """Run ``args`` with its output into the log (and ``on_line``) -> (exit code, lines)."""
        self._write("$ " + command_line([str(arg) for arg in args]))
        lines: list[str] = []
        with self._lock:
            if self._cancelled:
                raise SetupError(f"set-up cancelled; full log: {self.log_path}")
            try:
                self._process = subprocess.Popen([str(arg) for arg in args], stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                                 encoding="utf-8", errors="replace", env=child_environment(),
                                                 cwd=self.folder, creationflags=_NO_WINDOW)
            except OSError as exc:  # e.g. the Python went away since it was found
                raise SetupError(f"cannot run {args[0]} ({exc.strerror or exc})") from None
        process = self._process
        for line in process.stdout:  # read to the end: a pipe nobody reads would block pip
            line = line.rstrip("\r\n")
            lines.append(line)
            self._write(line)
            if on_line is not None:
                on_line(line)
        code = process.wait()
        self._write(f"(exit code {code})")
        with self._lock:
            self._process = None
        if self._cancelled:
            raise SetupError(f"set-up cancelled; full log: {self.log_path}")
        return code, lines

    def cancel(self) -> None:
        """Stop at the next step; the running child (pip) is terminated now."""
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    # -- the steps

    def run(self) -> Installed:
        started = time.monotonic()
        try:
            self._prepare_folder()
            self._begin(2)
            interpreter = find_python(self.python, self._write)
            self._report(f"using {interpreter.label}: Python {interpreter.version} at {interpreter.executable}")
            self._begin(3)
            self._report(check_disk(self.folder))
            self._begin(4)
            requirement = self._copy_source()
            self._begin(5)
            python, zs = self._make_venv(interpreter)
            self._begin(6)
            self._pip_install(python, requirement)
            self._begin(7)
            self._check(python, zs)
        except SetupError as exc:
            error = self._error(str(exc))
            self._write(f"FAILED: {error}")
            raise error from None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        seconds = time.monotonic() - started
        return Installed(self.folder, self.venv, python, zs, command_line([str(zs), "serve"]),
                         self.folder / "data", self.log_path, seconds)

    def _prepare_folder(self) -> None:
        self._step = 1
        self.progress(1, len(STEPS), STEPS[0])
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w", encoding="utf-8")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise SetupError(f"not enough free disk space at {self.folder} to even start: the server needs "
                                 f"{_gb(REQUIRED_BYTES)}") from None
            raise SetupError(f"the Server Folder {self.folder} is not writable ({exc.strerror or exc}): choose a "
                             f"folder you can write to in the add-on preferences, then press Set Up Server "
                             f"again") from None
        self._write(f"ZS Texturing server set-up into {self.folder} ({time.strftime('%Y-%m-%d %H:%M:%S')}); "
                    f"Blender's Python {sys.version.split()[0]} at {sys.executable}")
        self._report(STEPS[0])

    def _copy_source(self) -> str:
        source = resolve_source(self.source)
        if isinstance(source, str):
            self._report(f"installing from {source} as pip takes it")
            return source
        dest = self.folder / "source"
        if source.resolve() == dest.resolve():  # the copy of a previous run, named as the source
            self._report(f"installing {dest} as it is")
            return str(dest)
        try:
            count = copy_source(source, dest)
        except OSError as exc:
            raise self._os_error(exc, f"copying {source} to {dest}") from None
        self._report(f"copied {count} files from {source}")
        return str(dest)

    def _os_error(self, exc: OSError, doing: str) -> SetupError:
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(nearest_existing(self.folder)).free
            return SetupError(f"not enough disk space while {doing}: the server needs {_gb(REQUIRED_BYTES)} free at "
                              f"{self.folder}, {_gb(free)} available")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return SetupError(f"the Server Folder {self.folder} is not writable ({doing}: {exc.strerror})")
        return SetupError(f"{doing} failed: {exc}")

    def _make_venv(self, interpreter: Interpreter) -> tuple[Path, Path]:
        python, zs = venv_executables(self.venv)
        if python.is_file():
            code, lines = self._run([python, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"])
            if code == 0 and lines and lines[-1].strip() == "%d.%d" % PYTHON_VERSION:
                self._report(f"reusing the virtual environment {self.venv}")
                return python, zs
            self._report(f"replacing the broken virtual environment {self.venv}")
        code, lines = self._run([interpreter.executable, "-m", "venv", "--clear", self.venv])
        if code != 0 or not python.is_file():
            text = "\n".join(lines)
            if "No space left" in text or "Errno 28" in text:
                raise self._os_error(OSError(errno.ENOSPC, "No space left on device"), "creating the venv")
            last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
            raise SetupError(f"creating the virtual environment {self.venv} with {interpreter.executable} failed "
                             f"(exit code {code}: {last[:200]}); set the Python preference to another Python "
                             f"{'%d.%d' % PYTHON_VERSION}")
        self._report(f"created {self.venv}")
        return python, zs

    def _pip_install(self, python: Path, requirement: str) -> None:
        collected = 0

        def on_line(line: str) -> None:
            nonlocal collected
            collected += bool(_LOOKED_AT.match(line))
            if (shown := pip_progress(line, collected)) is not None:
                self.progress(self._step, len(STEPS), shown)

        # --prefer-binary: an artist's machine has no compiler for a package that only has a new sdist.
        code, lines = self._run([python, "-m", "pip", "install", "--prefer-binary", requirement], on_line)
        if code != 0:
            raise pip_failure(lines, code, self.folder, self.log_path)
        self._report(f"pip installed {requirement} ({collected} packages looked at)")

    def _check(self, python: Path, zs: Path) -> None:
        # -I: the venv's own packages only, not the folder we run in or PYTHONPATH.
        code, lines = self._run([python, "-I", "-c", _CHECK])
        if code == 0 and zs.is_file():
            code, help_lines = self._run([zs, "--help"])
            lines += help_lines
        if code != 0 or not zs.is_file():
            last = next((line.strip() for line in reversed(lines) if line.strip()), f"no {zs}")
            raise SetupError(f"the install finished but the server does not load ({last[:300]}); press Set Up Server "
                             f"again, or set the Server Source preference to another version")
        self._report(f"the server loads: {command_line([str(zs), 'serve'])}")
