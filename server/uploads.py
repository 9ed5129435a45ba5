"""Job uploads: read a size-capped body, split the multipart form, validate request and passes.

The form has two parts: ``request`` (the request JSON) and the passes, either ``passes``
(the .npz) or, for an animation, ``exr_sequence`` (a zip of the EXR files and JSON
sidecars an ordinary render with the "ZS passes" setting writes, decoded here by
:mod:`zs_core.exr_sequence`). python-multipart's parser splits the size-capped body once
it is in memory; the validation is :mod:`zs_core.protocol`'s plus the server's limits.
Before any array is decompressed, the .npz (or zip and EXR) headers are checked against
the limits, so a small upload cannot expand into gigabytes of memory.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from pathlib import Path
from dataclasses import dataclass

import numpy as np
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request as HttpRequest

from zs_core import exr_sequence, run
from zs_core.protocol import TEXEL_ARRAYS, VIEW_ARRAYS, Passes, ProtocolError, Request

from .config import Settings
from .errors import ApiError

FORM_FIELDS = ("request", "passes", "exr_sequence")
PASSES_FIELDS = ("passes", "exr_sequence")  # exactly one of them
SEQUENCE_MEMBER = re.compile(r"[\w .-]{1,200}\.(exr|json)")  # plain file names only: no folders


@dataclass
class ValidJob:
    request: Request
    passes: Passes


async def read_body(request: HttpRequest, limit: int) -> bytearray:
    """The whole request body; 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "content-length", f"not a byte count: {declared!r}")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # chunked uploads carry no length: count as we go
            raise _too_large(len(body), limit)
    return body


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body", f"upload of {size} bytes exceeds the limit of {limit} bytes (max_upload_bytes)")


def parse_multipart(body: bytes | bytearray, content_type: str | None) -> dict[str, bytes]:
    """multipart/form-data -> {field name: content} with python-multipart's parser.

    Raises 415 for another content type and 400 (naming the field) on bad framing."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise ApiError(415, "content-type", f"expected multipart/form-data, got {content_type or 'nothing'!r}")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "content-type", "multipart/form-data without a usable boundary")
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(bytes(body))
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "body", f"malformed multipart body ({exc})") from None
    if not collector.complete:
        raise ApiError(400, "body", "truncated multipart body: closing boundary missing")
    return collector.fields


class _PartCollector:
    """Callbacks for python-multipart's streaming parser: gathers each part's bytes."""

    def __init__(self):
        self.fields: dict[str, bytes] = {}
        self.complete = False
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._data = bytearray()

    def callbacks(self) -> dict:
        return dict(
            on_part_begin=self._part_begin,
            on_header_field=lambda data, start, end: self._header_field.extend(data[start:end]),
            on_header_value=lambda data, start, end: self._header_value.extend(data[start:end]),
            on_header_end=self._header_end,
            on_part_data=lambda data, start, end: self._data.extend(data[start:end]),
            on_part_end=self._part_end,
            on_end=self._end,
        )

    def _part_begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _part_end(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise ApiError(400, "body", "multipart part without Content-Disposition")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise ApiError(400, "body", "multipart part without a field name")
        if name in self.fields:
            raise ApiError(400, name, "form field given twice")
        self.fields[name] = bytes(self._data)

    def _end(self) -> None:
        self.complete = True


def validate_job(fields: dict[str, bytes], settings: Settings, components) -> ValidJob:
    """Form fields -> a validated job, or ProtocolError / ApiError naming the field.

    CPU heavy (decompresses and checks every array): call it off the event loop.
    """
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise ProtocolError(unknown[0], "unknown form field; expected request and passes (or exr_sequence)")
    if "request" not in fields:
        raise ProtocolError("request", "missing form field")
    given = [name for name in PASSES_FIELDS if name in fields]
    if len(given) != 1:
        raise ProtocolError("passes", "give exactly one of the form fields passes (.npz) and exr_sequence (.zip); "
                                      f"got {' and '.join(given) or 'neither'}")
    request = Request.from_json(bytes(fields["request"]))
    check_request_limits(request, settings)
    if given[0] == "exr_sequence":
        passes = read_exr_sequence(fields["exr_sequence"], settings, request)
    else:
        check_npz_headers(fields["passes"], settings, animation=request.kind == "animation")
        passes = Passes.load(fields["passes"])
    # The sampler's own input checks (validates both again, plus model-specific rules such
    # as multiples of the VAE factor) so anything it would reject is a 4xx here, not a failed job.
    run.check_inputs(components, request, passes)
    return ValidJob(request=request, passes=passes)


def check_request_limits(request: Request, settings: Settings) -> None:
    if request.steps > settings.max_steps:
        raise ProtocolError("steps", f"{request.steps} is over this server's limit of {settings.max_steps}")
    if request.texture_size > settings.max_texture_size:
        raise ProtocolError("texture_size", f"{request.texture_size} is over this server's limit of "
                                            f"{settings.max_texture_size}")


def check_npz_headers(npz: bytes | bytearray, settings: Settings, animation: bool = False) -> None:
    """Check array shapes against the limits from the .npy headers alone (nothing inflated).

    Every per-view array of the protocol (``VIEW_ARRAYS``: leading axes views, height,
    width; frames for an animation job, ``max_frames``) and every texel map
    (``TEXEL_ARRAYS``: T, T) is checked."""
    shapes: dict[str, tuple] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(npz)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
            if unpacked > settings.max_unpacked_bytes:
                raise ProtocolError("passes", f"unpacks to {unpacked} bytes; this server takes at most "
                                              f"{settings.max_unpacked_bytes} (max_unpacked_bytes)")
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(member)
                shapes[info.filename[:-4]] = shape
    except ProtocolError:
        raise
    except Exception as exc:  # not a zip, a truncated one, a bad .npy header: all the upload's fault
        raise ProtocolError("passes", f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    for name in VIEW_ARRAYS:
        shape = shapes.get(name)
        if shape is None or len(shape) < 3:
            continue  # missing or malformed: Passes.validate names the problem
        views, height, width = shape[:3]
        if animation and views > settings.max_frames:
            raise ProtocolError("frames", f"{views} frames in {name}; this server takes at most "
                                          f"{settings.max_frames}")
        if not animation and views > settings.max_views:
            raise ProtocolError("views", f"{views} views in {name}; this server takes at most {settings.max_views}")
        for axis, size in (("height", height), ("width", width)):
            if size > settings.max_resolution:
                raise ProtocolError(axis, f"{size} pixels in {name}; this server takes at most "
                                          f"{settings.max_resolution}")
    for name in TEXEL_ARRAYS:
        shape = shapes.get(name)
        if shape and max(shape[:2]) > settings.max_texture_size:
            raise ProtocolError(name, f"{max(shape[:2])} texels a side; this server takes at most "
                                      f"{settings.max_texture_size}")


def read_exr_sequence(archive_bytes: bytes | bytearray, settings: Settings, request: Request) -> Passes:
    """A zip of ``NNNN.exr`` + ``NNNN.json`` (an ordinary render's ZS passes) -> the animation's
    Passes. The zip's directory is checked (plain names, count, unpacked size) before
    anything is extracted, and every EXR header before its pixels are read."""
    if request.kind != "animation":
        raise ProtocolError("exr_sequence", "an EXR sequence is an animation's frames; this request is a "
                                            f"{request.kind} job")
    try:
        with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
            members = archive.infolist()
            bad = [info.filename for info in members if not SEQUENCE_MEMBER.fullmatch(info.filename)]
            if bad:
                raise ProtocolError("exr_sequence", f"member {bad[0]!r}: expected plain NNNN.exr / NNNN.json names")
            if len(members) > 2 * settings.max_frames:
                raise ProtocolError("frames", f"{len(members)} files; this server takes at most {settings.max_frames} "
                                              "frames (an EXR and a sidecar each)")
            unpacked = sum(info.file_size for info in members)
            if unpacked > settings.max_unpacked_bytes:
                raise ProtocolError("exr_sequence", f"unpacks to {unpacked} bytes; this server takes at most "
                                                    f"{settings.max_unpacked_bytes} (max_unpacked_bytes)")
            with tempfile.TemporaryDirectory(prefix="zs-exr-") as folder:
                archive.extractall(folder)
                shot = exr_sequence.read_shot(Path(folder), max_frames=settings.max_frames,
                                              max_size=settings.max_resolution)
    except ProtocolError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ProtocolError("exr_sequence", f"not a readable zip archive ({type(exc).__name__}: {exc})") from None
    request.fps = shot.fps
    return shot.passes
