"""Job uploads: the multipart form streamed to disk, then the request and passes checked
against the protocol and this server's limits, each before it costs memory.

The form has two parts: ``request`` (the request JSON, at most ``max_request_bytes``, kept
in memory) and the passes, either ``passes`` (the .npz) or, for an animation,
``exr_sequence`` (a zip of a ZS-passes render's EXR files and sidecars, see
:mod:`.exr_upload`). Any other field is refused at its headers.

What one upload may cost, and how it is bounded:

- the body is parsed as it arrives (:mod:`.form_stream`) and the passes part written to a
  file in ``<data-dir>/uploads/<random>/``; memory: one batch of about 1 MiB. The body
  counts against ``max_upload_bytes`` (413), and all bodies being received together
  (with the files of EXR sequences being unpacked) against ``max_uploads_bytes`` (503
  with Retry-After). A disk that fills up is a 507 saying how many bytes the upload needs;
- the .npz is opened with :class:`zs_core.protocol.NpzArchive`: only the protocol's arrays,
  each header's dtype and shape checked against the protocol and the limits, and each
  member holding exactly the bytes its header declares, all before any data is inflated;
- the arrays are read only once their declared size (at most ``max_unpacked_bytes``) is
  reserved from ``max_uploads_memory_bytes``, which all uploads being checked share
  (waiting up to ``upload_wait_seconds``, then 503 with Retry-After).

So a hostile upload costs its own size on disk and at most its declared, limit-checked
array size in memory (plus the checks' temporaries, a fraction of that).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest

from zs_core import run
from zs_core.protocol import CAMERA_ARRAYS, REFERENCE_IMAGE_SIDES, TEXEL_ARRAYS, VIEW_ARRAYS, ArrayHeader, \
    NpzArchive, Passes, ProtocolError, Request

from . import exr_upload
from .budget import Budget
from .config import Settings
from .errors import ApiError, busy, insufficient_storage, is_disk_full
from .form_stream import FieldRule, FormStream

PASSES_FIELDS = ("passes", "exr_sequence")  # exactly one of them
REFERENCE_IMAGE = "reference_image"  # the one array of the passes not shaped by the views
SPOOL_FOLDER = "uploads"
BATCH_BYTES = 1 << 20  # body bytes handed to the parser's thread at once
RETRY_AFTER_SECONDS = 5
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


@dataclass
class ValidJob:
    request: Request
    passes: Passes
    npz: Path  # the passes .npz on disk (the upload itself, or the decoded EXR sequence)


def form_rules(settings: Settings) -> dict[str, FieldRule]:
    return {"request": FieldRule(settings.max_request_bytes, "max_request_bytes"),
            "passes": FieldRule(settings.max_upload_bytes, "max_upload_bytes", to_file=True),
            "exr_sequence": FieldRule(settings.max_upload_bytes, "max_upload_bytes", to_file=True)}


class UploadGate:
    """What all uploads share: the spool folder under the data dir (never /tmp, which may
    be memory) and the two budgets."""

    def __init__(self, settings: Settings):
        self.folder = settings.data_dir / SPOOL_FOLDER
        shutil.rmtree(self.folder, ignore_errors=True)  # what a server stopped mid-upload left
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.bodies = Budget(settings.max_uploads_bytes)
        self.memory = Budget(settings.max_uploads_memory_bytes)


class Upload:
    """One upload: its folder, its form fields (bytes, or the file a part was written to)
    and what it holds of the gate's budgets, all given back by :func:`receive`."""

    def __init__(self, gate: UploadGate, settings: Settings):
        self.gate = gate
        self.settings = settings
        self.folder = gate.folder / secrets.token_hex(8)
        self.folder.mkdir(mode=0o700)
        self.fields: dict[str, bytes | Path] = {}
        self.body_bytes = 0  # taken from gate.bodies
        self.memory_bytes = 0  # taken from gate.memory

    def take_body(self, amount: int, field: str = "body") -> None:
        if not self.gate.bodies.try_take(amount):
            raise busy(field, f"the server is receiving other uploads ({self.gate.bodies.used} of "
                              f"{self.gate.bodies.capacity} bytes on disk, max_uploads_bytes)", RETRY_AFTER_SECONDS)
        self.body_bytes += amount

    async def take_memory(self, amount: int, field: str) -> None:
        budget = self.gate.memory
        if amount > budget.capacity:
            raise ApiError(413, field, f"needs {amount} bytes of memory to check; this server checks at most "
                                       f"{budget.capacity} at once (max_uploads_memory_bytes)")
        if not await budget.take(amount, self.settings.upload_wait_seconds):
            raise busy(field, f"the server is checking other uploads ({budget.used} of {budget.capacity} bytes of "
                              "memory in use, max_uploads_memory_bytes)", RETRY_AFTER_SECONDS)
        self.memory_bytes += amount

    def release(self) -> None:
        self.gate.bodies.give(self.body_bytes)
        self.gate.memory.give(self.memory_bytes)
        self.body_bytes = self.memory_bytes = 0
        shutil.rmtree(self.folder, ignore_errors=True)


@asynccontextmanager
async def receive(request: HttpRequest, settings: Settings, gate: UploadGate,
                  on_request: Callable[[bytes], Awaitable[None]] | None = None) -> AsyncIterator[Upload]:
    """Stream the body into a new upload folder -> the Upload; everything it holds (files,
    budgets) is given back when the block ends, whatever happens in it. ``on_request``
    gets the request JSON part as soon as it is in (it comes first in the form): an
    error it raises refuses the upload before the passes are read."""
    upload = Upload(gate, settings)
    try:
        await _stream_body(request, upload, on_request)
        yield upload
    finally:
        upload.release()


async def _stream_body(request: HttpRequest, upload: Upload,
                       on_request: Callable[[bytes], Awaitable[None]] | None = None) -> None:
    settings = upload.settings
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _CONTENT_LENGTH.fullmatch(declared):
            raise ApiError(400, "content-length", f"not a byte count: {declared[:40]!r}")
        declared = int(declared)
        if declared > limit:
            raise _too_large(declared, limit)
        upload.take_body(declared)
        free = shutil.disk_usage(upload.folder).free
        if declared > free:  # refused before a byte is written
            raise insufficient_storage(OSError(errno.ENOSPC, "not enough free space"), "body", declared, upload.folder)
    form = FormStream(request.headers.get("content-type"), form_rules(settings), upload.folder)
    received, batch, batched = 0, [], 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:  # chunked uploads carry no length: count as we go
                raise _too_large(received, limit)
            if declared is None:
                upload.take_body(len(chunk))
            batch.append(chunk)
            batched += len(chunk)
            if batched >= BATCH_BYTES:
                await run_in_threadpool(_feed, form, b"".join(batch), declared or received, upload.folder)
                batch, batched = [], 0
                if on_request is not None and isinstance(form.values.get("request"), bytes):
                    await on_request(form.values["request"])
                    on_request = None
        if batch:
            await run_in_threadpool(_feed, form, b"".join(batch), declared or received, upload.folder)
        upload.fields = form.finish()
        if on_request is not None and isinstance(upload.fields.get("request"), bytes):
            await on_request(upload.fields["request"])
    finally:
        form.close()


def _feed(form: FormStream, data: bytes, needed: int, folder: Path) -> None:
    try:
        form.feed(data)
    except OSError as exc:
        if is_disk_full(exc):
            raise insufficient_storage(exc, form.field or "body", needed, folder) from None
        raise


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body", f"upload of {size} bytes exceeds the limit of {limit} bytes (max_upload_bytes)")


# ---------------------------------------------------------------- checking the job


async def check(upload: Upload, components) -> ValidJob:
    """The upload's fields -> a validated job, or ProtocolError / ApiError naming the field.
    The heavy parts run in the thread pool, once their memory is reserved."""
    settings, fields = upload.settings, upload.fields
    if "request" not in fields:
        raise ProtocolError("request", "missing form field")
    given = [name for name in PASSES_FIELDS if name in fields]
    if len(given) != 1:
        raise ProtocolError("passes", "give exactly one of the form fields passes (.npz) and exr_sequence (.zip); "
                                      f"got {' and '.join(given) or 'neither'}")
    request = Request.from_json(fields["request"])
    check_request_limits(request, settings)
    if given[0] == "passes":
        archive = await run_in_threadpool(open_passes, fields["passes"], settings, request.kind == "animation")
        try:
            await upload.take_memory(archive.declared_bytes, "passes")
            passes = await run_in_threadpool(_read_and_check, archive, request, components)
        finally:
            archive.close()
        return ValidJob(request, passes, fields["passes"])
    unpacked = await run_in_threadpool(exr_upload.check_directory, fields["exr_sequence"], settings, request)
    upload.take_body(unpacked, "exr_sequence")  # the extracted files are upload bytes on disk too
    plan = await run_in_threadpool(exr_upload.extract, fields["exr_sequence"], upload.folder / "frames", settings)
    await upload.take_memory(plan.memory_bytes, "exr_sequence")
    passes = await run_in_threadpool(exr_upload.decode, plan, settings, request)
    npz = upload.folder / "passes.npz"
    await run_in_threadpool(_check_and_save, request, passes, components, npz)
    return ValidJob(request, passes, npz)


def _read_and_check(archive: NpzArchive, request: Request, components) -> Passes:
    passes = archive.passes()
    # The sampler's own input checks (validates both again, plus model-specific rules such
    # as multiples of the VAE factor) so anything it would reject is a 4xx here, not a failed job.
    run.check_inputs(components, request, passes)
    return passes


def _check_and_save(request: Request, passes: Passes, components, path: Path) -> None:
    run.check_inputs(components, request, passes)
    try:
        # Owner-only like the spooled uploads; synced, since the job store adopts it as it is.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            passes.save(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if is_disk_full(exc):
            raise insufficient_storage(exc, "exr_sequence", sum(a.nbytes for a in passes.arrays().values()),
                                       path.parent) from None
        raise


def check_request_limits(request: Request, settings: Settings) -> None:
    if request.steps > settings.max_steps:
        raise ProtocolError("steps", f"{request.steps} is over this server's limit of {settings.max_steps}")
    if request.texture_size > settings.max_texture_size:
        raise ProtocolError("texture_size", f"{request.texture_size} is over this server's limit of "
                                            f"{settings.max_texture_size}")


def open_passes(source, settings: Settings, animation: bool = False) -> NpzArchive:
    """The .npz opened with every header checked (:func:`check_npz_headers`); nothing inflated."""
    archive = NpzArchive(source)
    try:
        check_npz_headers(archive.headers, settings, animation)
    except BaseException:
        archive.close()
        raise
    return archive


def check_npz_headers(headers: dict[str, ArrayHeader], settings: Settings, animation: bool = False) -> None:
    """Every array's declared shape against the protocol and the limits, from the headers alone.

    Per-view arrays (``VIEW_ARRAYS``: views, height, width, then their channels; frames for
    an animation, ``max_frames``), cameras (views, 4, 4) and texel maps (``TEXEL_ARRAYS``:
    T, T, channels) must have exactly their shape, the reference image (H', W', 3) any
    size within REFERENCE_IMAGE_SIDES; each size is held to its limit, and the total to
    ``max_unpacked_bytes``. The dtypes were checked by NpzArchive."""
    for header in headers.values():
        _check_layout(header)
    for name, header in headers.items():
        if name in VIEW_ARRAYS:
            _check_view_limits(header, settings, animation)
        elif name in TEXEL_ARRAYS and max(header.shape[:2]) > settings.max_texture_size:
            raise ProtocolError(name, f"{max(header.shape[:2])} texels a side; this server takes at most "
                                      f"{settings.max_texture_size}")
        elif name == REFERENCE_IMAGE and not (REFERENCE_IMAGE_SIDES[0] <= min(header.shape[:2])
                                              and max(header.shape[:2]) <= REFERENCE_IMAGE_SIDES[1]):
            raise ProtocolError(name, f"{header.shape[1]}x{header.shape[0]} pixels; each side must be in "
                                      f"[{REFERENCE_IMAGE_SIDES[0]}, {REFERENCE_IMAGE_SIDES[1]}]")
    if "depth" not in headers:
        raise ProtocolError("depth", "missing from the passes")
    views = headers["depth"].shape[:3]
    texels = next((header.shape[:2] for name, header in headers.items() if name in TEXEL_ARRAYS), None)
    for name, header in headers.items():
        if name == REFERENCE_IMAGE:  # any size, not tied to the views
            continue
        if name in TEXEL_ARRAYS:
            if header.shape[:2] != texels:
                raise ProtocolError(name, f"declared shape {header.shape}; the other texel maps are "
                                          f"{texels[0]}x{texels[1]}")
        elif header.shape[:3 if name in VIEW_ARRAYS else 1] != views[:3 if name in VIEW_ARRAYS else 1]:
            raise ProtocolError(name, f"declared shape {header.shape} does not match depth's (views, height, "
                                      f"width) {views}")
    total = sum(header.nbytes for header in headers.values())
    if total > settings.max_unpacked_bytes:
        raise ProtocolError("passes", f"unpacks to {total} bytes; this server takes at most "
                                      f"{settings.max_unpacked_bytes} (max_unpacked_bytes)")


def _check_layout(header: ArrayHeader) -> None:
    """The number of axes and the channel axes the protocol gives ``header``'s array."""
    name = header.name
    if name in VIEW_ARRAYS:
        expected = ("V", "H", "W", *VIEW_ARRAYS[name][0])
    elif name in CAMERA_ARRAYS:
        expected = ("V", 4, 4)
    elif name == REFERENCE_IMAGE:
        expected = ("H", "W", 3)
    elif name == "completion":  # one flag per view
        expected = ("V",)
    else:
        expected = ("T", "T", *TEXEL_ARRAYS[name][0])
    fixed = all(want == got for want, got in zip(expected, header.shape) if isinstance(want, int))
    if len(header.shape) != len(expected) or not fixed:
        raise ProtocolError(name, f"declared shape {header.shape}; expected ({', '.join(map(str, expected))})")


def _check_view_limits(header: ArrayHeader, settings: Settings, animation: bool) -> None:
    name, (views, height, width) = header.name, header.shape[:3]
    if animation and views > settings.max_frames:
        raise ProtocolError("frames", f"{views} frames in {name}; this server takes at most {settings.max_frames}")
    if not animation and views > settings.max_views:
        raise ProtocolError("views", f"{views} views in {name}; this server takes at most {settings.max_views}")
    for axis, size in (("height", height), ("width", width)):
        if size > settings.max_resolution:
            raise ProtocolError(axis, f"{size} pixels in {name}; this server takes at most {settings.max_resolution}")
