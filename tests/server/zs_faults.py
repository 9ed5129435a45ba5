"""Fault injection for the server tests: a real size-limited file system, and an ``os``
layer that stands in for :mod:`server.durable`'s to fail (or fill the disk) on chosen calls.

- :class:`Tmpfs`: ``mount -t tmpfs -o size=...`` on a test folder (root only; the tests that
  need it skip with the reason otherwise). :meth:`Tmpfs.fill` writes a ballast file until
  the kernel answers ENOSPC, :meth:`Tmpfs.free` deletes it: the ENOSPC the server then meets
  is the kernel's own.
- :class:`FaultyOs`: every call goes to the real ``os`` unless a :class:`Rule` matches the
  call, the path and (for writes) the bytes; then the rule fills the disk before or after
  the call (a real ENOSPC at exactly that write point), raises an errno (EIO, which no real
  file system here gives on demand), or makes the write short.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BALLAST = "ballast"


class Tmpfs:
    def __init__(self, path: Path, size: str = "24m"):
        self.path, self.size = Path(path), size
        self.path.mkdir(parents=True, exist_ok=True)
        self._ballast: list[Path] = []

    def mount(self) -> str | None:
        """None when mounted, else why not (the caller skips)."""
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return f"cannot mount a {self.size} tmpfs on {self.path} (needs root): {result.stderr.strip()}"
        return None

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)  # still busy: detach it

    def fill(self) -> None:
        """Write ballast until the file system is full, to the last page."""
        target = self.path / f"{BALLAST}-{len(self._ballast)}"
        self._ballast.append(target)
        with open(target, "wb", buffering=0) as handle:
            for chunk in (1 << 20, 4096, 1):
                block = b"\0" * chunk
                try:
                    while True:
                        handle.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        for path in self._ballast:
            path.unlink(missing_ok=True)
        self._ballast.clear()

    def free_bytes(self) -> int:
        return os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize


@dataclass
class Rule:
    call: str  # "open", "write", "fsync", "replace", "mkdir", "ftruncate", ...
    path: str | tuple[str, ...] | re.Pattern = ""  # substring(s) of the path, or a pattern (replace: "a -> b")
    data: bytes = b""  # write only: a substring of the bytes written
    error: int | None = None  # raise OSError(error) instead of making the call
    before: Callable[[], None] | None = None  # e.g. Tmpfs.fill: the call then meets a real ENOSPC
    after: Callable[[], None] | None = None
    short: bool = False  # write: only half of the bytes (at least one)
    times: int = 1
    hits: int = 0

    def matches(self, call: str, path: str, data: bytes) -> bool:
        if self.hits >= self.times or call != self.call or (self.data and self.data not in data):
            return False
        if isinstance(self.path, re.Pattern):
            return self.path.search(path) is not None
        return all(part in path for part in ((self.path,) if isinstance(self.path, str) else self.path))


class FaultyOs:
    """A stand-in for the ``os`` module (install with monkeypatch on ``server.durable.os``)."""

    def __init__(self, real=os):
        self._real = real
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()
        self.rules: list[Rule] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _match(self, call: str, path: str, data: bytes = b"") -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(call, path, data):
                    rule.hits += 1
                    return rule
        return None

    def _around(self, call: str, path: str, data: bytes, run):
        rule = self._match(call, path, data)
        if rule is None:
            return run()
        if rule.before is not None:
            rule.before()
        if rule.error is not None:
            raise OSError(rule.error, f"{os.strerror(rule.error)} (injected)", path)
        result = run()
        if rule.after is not None:
            rule.after()
        return result

    # The calls server.durable makes (the rest pass through __getattr__).

    def open(self, path, flags, mode=0o777, **kwargs):
        fd = self._around("open", str(path), b"", lambda: self._real.open(path, flags, mode, **kwargs))
        self._paths[fd] = str(path)
        return fd

    def close(self, fd):
        self._paths.pop(fd, None)
        return self._real.close(fd)

    def write(self, fd, data):
        path, data_bytes = self._paths.get(fd, ""), bytes(data)
        rule = self._match("write", path, data_bytes)
        if rule is None:
            return self._real.write(fd, data)
        if rule.before is not None:
            rule.before()
        if rule.error is not None:
            raise OSError(rule.error, f"{os.strerror(rule.error)} (injected)", path)
        written = self._real.write(fd, data_bytes[:max(1, len(data_bytes) // 2)] if rule.short else data)
        if rule.after is not None:
            rule.after()
        return written

    def fsync(self, fd):
        return self._around("fsync", self._paths.get(fd, ""), b"", lambda: self._real.fsync(fd))

    def replace(self, source, target):
        return self._around("replace", f"{source} -> {target}", b"", lambda: self._real.replace(source, target))

    def mkdir(self, path, mode=0o777):
        return self._around("mkdir", str(path), b"", lambda: self._real.mkdir(path, mode))

    def ftruncate(self, fd, size):
        return self._around("ftruncate", self._paths.get(fd, ""), b"", lambda: self._real.ftruncate(fd, size))

    def truncate(self, path, size):
        return self._around("truncate", str(path), b"", lambda: self._real.truncate(path, size))
