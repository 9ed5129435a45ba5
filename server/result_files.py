"""A finished job's output files as the routes hand them out: ``/files/{name}`` and the
result zip both see only regular files inside ``out/``, reached without a symlink.

The worker never writes symlinks; one in ``out/`` was planted from outside (it put
/etc/passwd into a result zip once), so both routes skip it, and the zip reads every file
through a descriptor opened with O_NOFOLLOW, so a file swapped for a link between the
listing and the read is refused too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
import zipfile
from pathlib import Path, PurePosixPath

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Windows has no symlinks to follow here


def plain_parts(name: str) -> tuple[str, ...] | None:
    """``views/0000.png`` -> its parts; None for an absolute path, ``..``, ``.``, a backslash or NUL."""
    parts = PurePosixPath(name).parts
    if (not parts or name.startswith("/") or "\\" in name or "\x00" in name
            or any(part in ("..", ".") for part in parts)):
        return None
    return parts


def output_file(root: Path, parts: tuple[str, ...]) -> Path | None:
    """The regular file at ``root/parts``, or None if it is missing or any step is a symlink."""
    if os.path.islink(root):
        return None
    path = root
    for index, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        last = index == len(parts) - 1
        if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
            return None
    return path


def output_names(root: Path) -> list[str]:
    """Relative paths (forward slashes) of the regular files under ``root``, sorted; a
    symlink, to a file or a folder, is skipped (os.walk does not descend into one)."""
    if os.path.islink(root):
        return []
    names = []
    for folder, _, files in os.walk(root, followlinks=False):
        for file_name in files:
            path = Path(folder) / file_name
            if stat.S_ISREG(os.lstat(path).st_mode):
                names.append(path.relative_to(root).as_posix())
    return sorted(names)


def build_zip(root: Path, destination: Path) -> None:
    """Zip the outputs under ``root`` into ``destination`` (written to a temporary name and
    renamed, so concurrent first downloads each rename a complete zip)."""
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.tmp")
    try:
        # PNGs are compressed already: storing them is as small and much faster.
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in output_names(root):
                _add(archive, root / name, name)
        os.chmod(temporary, 0o600)  # like every file under the data dir: the owner's only
        temporary.replace(destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _add(archive: zipfile.ZipFile, path: Path, name: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError:  # swapped for a symlink (ELOOP) or removed since the listing
        return
    with os.fdopen(descriptor, "rb") as source:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            return
        info = zipfile.ZipInfo(name, date_time=time.localtime(status.st_mtime)[:6])
        info.external_attr = (status.st_mode & 0o777) << 16
        info.file_size = status.st_size
        with archive.open(info, "w", force_zip64=status.st_size > zipfile.ZIP64_LIMIT // 2) as target:
            shutil.copyfileobj(source, target, 1 << 20)
