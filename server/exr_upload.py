"""An ``exr_sequence`` upload: a zip of the EXR files and JSON sidecars a ZS-passes render
wrote, checked before it costs memory, then decoded by :mod:`zs_core.exr_sequence`.

Before anything is extracted: the zip's directory size and member count (from its end
records), plain ``NNNN.exr`` / ``NNNN.json`` names, small sidecars, the unpacked total
against ``max_unpacked_bytes`` and the free disk space. Before any pixel is read: every
EXR header (flat images only, size against ``max_resolution``) and every sidecar's size;
from them, the memory decoding needs (the decoded arrays plus the largest frame's raw
channels, a few times over for the conversions), which the caller reserves first.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import OpenEXR

from zs_core import exr_sequence
from zs_core.protocol import ANIMATION, Passes, ProtocolError, Request, zip_directory

from .config import Settings
from .errors import insufficient_storage, is_disk_full

FIELD = "exr_sequence"
SEQUENCE_MEMBER = re.compile(r"[\w .-]{1,200}\.(exr|json)")  # plain file names only: no folders
MAX_SIDECAR_BYTES = 64 * 1024
DIRECTORY_BYTES_PER_MEMBER = 1024  # a central directory entry: 46 bytes plus name and extras
# Wire arrays per pixel once decoded: depth 4, mask 1, uv 8, normal 12, position 12, vector 8.
DECODED_BYTES_PER_PIXEL = 45
RAW_COPIES = 3  # a frame's channels as read, stacked per pass, and converted to float32
FLAT_PARTS = (OpenEXR.scanlineimage, OpenEXR.tiledimage)


@dataclass
class Plan:
    """An extracted, header-checked sequence: where its files are and what decoding costs."""

    folder: Path
    frames: int
    memory_bytes: int


def check_directory(archive_path: Path, settings: Settings, request: Request) -> int:
    """Check the zip's directory (nothing extracted) -> the bytes it unpacks to."""
    if request.kind != ANIMATION:
        raise ProtocolError(FIELD, f"an EXR sequence is an animation's frames; this request is a {request.kind} job")
    with _open_zip(archive_path, settings) as archive:
        members = archive.infolist()
    bad = [info.filename for info in members if not SEQUENCE_MEMBER.fullmatch(info.filename)]
    if bad:
        raise ProtocolError(FIELD, f"member {bad[0]!r}: expected plain NNNN.exr / NNNN.json names")
    names = [info.filename for info in members]
    if len(set(names)) != len(names):
        raise ProtocolError(FIELD, "a file name appears twice in the zip")
    big = [info for info in members if info.filename.endswith(".json") and info.file_size > MAX_SIDECAR_BYTES]
    if big:
        raise ProtocolError(FIELD, f"sidecar {big[0].filename} of {big[0].file_size} bytes; sidecars are at most "
                                   f"{MAX_SIDECAR_BYTES}")
    unpacked = sum(info.file_size for info in members)
    if unpacked > settings.max_unpacked_bytes:
        raise ProtocolError(FIELD, f"unpacks to {unpacked} bytes; this server takes at most "
                                   f"{settings.max_unpacked_bytes} (max_unpacked_bytes)")
    return unpacked


def extract(archive_path: Path, folder: Path, settings: Settings) -> Plan:
    """Extract a zip :func:`check_directory` passed into ``folder``, check every header -> Plan."""
    with _open_zip(archive_path, settings) as archive:
        members = archive.infolist()
        unpacked = sum(info.file_size for info in members)
        folder.mkdir(mode=0o700)
        if shutil.disk_usage(folder).free < unpacked:
            raise insufficient_storage(OSError(errno.ENOSPC, "not enough free space"), FIELD, unpacked, folder)
        try:
            for info in members:
                # The directory's sizes bound what is written: zipfile stops a member at its file_size.
                with archive.open(info) as source, \
                        os.fdopen(os.open(folder / info.filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                                  "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
        except OSError as exc:
            if is_disk_full(exc):
                raise insufficient_storage(exc, FIELD, unpacked, folder) from None
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
            raise ProtocolError(FIELD, f"not a readable zip archive ({type(exc).__name__}: {exc})") from None
    return _plan(folder, settings)


@contextmanager
def _open_zip(archive_path: Path, settings: Settings) -> Iterator[zipfile.ZipFile]:
    """The zip, its directory bounded (entry count and size, from the end records) before
    zipfile reads it into memory."""
    limit = 2 * settings.max_frames
    with open(archive_path, "rb") as handle:
        try:
            entries, directory_bytes = zip_directory(handle)
            if entries > limit:
                raise ProtocolError("frames", f"{entries} files; this server takes at most {settings.max_frames} "
                                              "frames (an EXR and a sidecar each)")
            if directory_bytes > limit * DIRECTORY_BYTES_PER_MEMBER:
                raise ProtocolError(FIELD, f"a zip directory of {directory_bytes} bytes for {entries} files")
            archive = zipfile.ZipFile(handle)
        except ProtocolError:
            raise
        except (zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise ProtocolError(FIELD, f"not a readable zip archive ({type(exc).__name__}: {exc})") from None
        with archive:
            yield archive


def _plan(folder: Path, settings: Settings) -> Plan:
    frames, pixels, largest_raw = 0, 0, 0
    for path in sorted(folder.iterdir()):
        if path.suffix == ".exr":
            frames += 1
            width, height, raw = _exr_size(path, settings.max_resolution)
            pixels, largest_raw = max(pixels, width * height), max(largest_raw, raw)
        else:
            width, height = _sidecar_size(path, settings.max_resolution)
            pixels = max(pixels, width * height)  # the decoder allocates what the sidecar says
    memory = frames * pixels * DECODED_BYTES_PER_PIXEL + RAW_COPIES * largest_raw
    if memory > settings.max_unpacked_bytes:
        raise ProtocolError(FIELD, f"decodes to about {memory} bytes ({frames} frames); this server takes at most "
                                   f"{settings.max_unpacked_bytes} (max_unpacked_bytes)")
    return Plan(folder, frames, memory)


def _exr_size(path: Path, max_size: int) -> tuple[int, int, int]:
    """(width, height, bytes of all channels as float32) from an EXR's header alone."""
    try:
        parts = OpenEXR.File(str(path), header_only=True).parts
        sizes = []
        for part in parts:
            if part.type() not in FLAT_PARTS:
                raise ProtocolError("exr", f"{path.name}: deep images are not render passes")
            (x0, y0), (x1, y1) = part.header["dataWindow"]
            sizes.append((int(x1) - int(x0) + 1, int(y1) - int(y0) + 1, len(part.header["channels"])))
    except ProtocolError:
        raise
    except Exception as exc:  # OpenEXR raises plain exceptions for unreadable files
        raise ProtocolError("exr", f"{path.name} is not a readable OpenEXR file ({exc})") from None
    for width, height, _ in sizes:
        if width < 1 or height < 1 or max(width, height) > max_size:
            raise ProtocolError("exr", f"{path.name}: {width}x{height} pixels; this server takes at most "
                                       f"{max_size} a side")
    width = max((w for w, _, _ in sizes), default=0)
    height = max((h for _, h, _ in sizes), default=0)
    return width, height, sum(w * h * channels * 4 for w, h, channels in sizes)


def _sidecar_size(path: Path, max_size: int) -> tuple[int, int]:
    """The frame size a sidecar declares (0 x 0 when it has none: the decoder names that)."""
    try:
        card = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return 0, 0  # the decoder reads it again and names the problem
    if not isinstance(card, dict):
        return 0, 0
    size = [card.get(key) for key in ("width", "height")]
    if not all(type(value) is int for value in size):
        return 0, 0
    for axis, value in zip(("width", "height"), size):
        if value > max_size:
            raise ProtocolError(axis, f"{path.name} says {value} pixels; this server takes at most {max_size}")
    return size[0], size[1]


def decode(plan: Plan, settings: Settings, request: Request) -> Passes:
    """The sequence's passes (the request's ``fps`` becomes the sidecars' frame rate)."""
    try:
        shot = exr_sequence.read_shot(plan.folder, max_frames=settings.max_frames, max_size=settings.max_resolution)
    except ProtocolError:
        raise
    except ValueError as exc:
        raise ProtocolError(FIELD, f"cannot decode the sequence ({exc})") from None
    request.fps = shot.fps
    return shot.passes
