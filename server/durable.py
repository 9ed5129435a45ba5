"""Durable file writes for the job store: a commit point counts only once it is on the disk.

- :func:`write_atomic`: a temporary sibling (mode 0600), every byte written, fsynced,
  renamed over the target, then the folder fsynced so the rename itself survives a power
  cut. The temporary file is removed when any step fails.
- :func:`append`: one record appended to a log, looping over short ``os.write`` calls; when
  a write fails half-way the file is cut back to its old length, so a failed append never
  leaves a torn line in the middle of a log for later lines to follow.
- :func:`commit_tree`: an output folder made owner-only, every file and folder fsynced,
  then renamed into place and its parent fsynced.

Every file system call goes through this module's ``os`` name, so the fault-injection tests
can replace it with a layer that fails on chosen calls (EIO, short writes).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

FILE_MODE = 0o600  # owner only: prompts and outputs are nobody else's business
DIR_MODE = 0o700
# No space left, over a quota, or over the process's file-size limit (ulimit -f).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The first OSError in an exception's chain (the sampler may wrap the one that matters)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_no_space(exc: BaseException | None) -> bool:
    error = os_error_in(exc)
    return error is not None and error.errno in NO_SPACE_ERRNOS


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def make_dir(path: Path) -> None:
    os.mkdir(path, DIR_MODE)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable. Windows cannot open folders;
    there NTFS journals the metadata itself."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` may write less than asked (signals, quotas, pipes): loop until all is out."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def is_temporary_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def write_atomic(path: Path, data: bytes | bytearray | str) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename it over ``path``, fsync the folder."""
    if isinstance(data, str):
        data = data.encode()
    temporary = temporary_name(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise
    fsync_dir(path.parent)


def append(path: Path, data: bytes, durable: bool) -> int:
    """Append ``data`` to ``path`` (created 0600 when missing) -> the offset it starts at.

    ``durable`` fsyncs the file (and the folder when the file is new). On failure the file
    is cut back to its old length and the error raised."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        start = os.fstat(fd).st_size  # one writer per log (the store's lock), so this is where we land
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)  # shrinking needs no space: works on a full disk too
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    if durable and start == 0:
        fsync_dir(path.parent)
    return start


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def replace(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` and make the rename durable."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


def commit_tree(source: Path, target: Path) -> None:
    """An output folder made owner-only and durable, file by file, then renamed to ``target``."""
    for root, folders, files in os.walk(source):
        for name in files:
            file_path = os.path.join(root, name)
            os.chmod(file_path, FILE_MODE)
            fd = os.open(file_path, os.O_RDWR)  # Windows fsyncs only what it may write
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in folders:
            os.chmod(os.path.join(root, name), DIR_MODE)
        fsync_dir(Path(root))
    os.chmod(source, DIR_MODE)
    replace(source, target)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
