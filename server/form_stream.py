"""A multipart/form-data body parsed as it streams in: file parts go to files, small parts
to memory, each with its own size cap; only the fields the caller names are accepted.

Fed chunk by chunk (python-multipart's streaming parser), so memory stays at one chunk
plus the small parts whatever the body's size; an unknown or repeated field is refused at
its headers, so a body of 200 000 parts is refused at its second or fourth. Errors are
:class:`ApiError` naming the field: 400 bad framing, 413 a part over its cap, 415 another
content type, 422 a field not asked for. ``OSError`` from writing a file part (disk full)
reaches the caller, which knows how much the upload needs (:attr:`FormStream.field` says
which part was being written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError

MAX_BOUNDARY = 200


@dataclass(frozen=True)
class FieldRule:
    """One accepted field: at most ``max_bytes`` bytes (413 over it, naming ``limit``, the
    setting), written to a file named after the field when ``to_file``."""

    max_bytes: int
    limit: str
    to_file: bool = False


class FormStream:
    """Feed the body with :meth:`feed`, then :meth:`finish` -> {field: bytes or file path}."""

    def __init__(self, content_type: str | None, rules: dict[str, FieldRule], folder: Path):
        media_type, params = parse_options_header(content_type or "")
        if media_type != b"multipart/form-data":
            raise ApiError(415, "content-type", f"expected multipart/form-data, got {content_type or 'nothing'!r}")
        boundary = params.get(b"boundary")
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise ApiError(400, "content-type", "multipart/form-data without a usable boundary")
        self.rules = rules
        self.folder = folder
        self.values: dict[str, bytes | Path] = {}
        self.field: str | None = None  # the part being read
        self.complete = False
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._memory: bytearray | None = None
        self._file = None
        self._size = 0
        self._parser = MultipartParser(boundary, dict(
            on_part_begin=self._part_begin,
            on_header_field=lambda data, start, end: self._header_field.extend(data[start:end]),
            on_header_value=lambda data, start, end: self._header_value.extend(data[start:end]),
            on_header_end=self._header_end,
            on_headers_finished=self._headers_finished,
            on_part_data=self._part_data,
            on_part_end=self._part_end,
            on_end=self._end,
        ))

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise ApiError(400, "body", f"malformed multipart body ({exc})") from None

    def finish(self) -> dict[str, bytes | Path]:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise ApiError(400, "body", f"malformed multipart body ({exc})") from None
        if not self.complete:
            raise ApiError(400, "body", "truncated multipart body: closing boundary missing")
        return self.values

    def close(self) -> None:
        """Close a file part left open by an error (the caller removes the folder)."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:  # flushing what the full disk refused: the error is being reported already
                pass

    # ------------------------------------------------------------ parser callbacks

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise ApiError(400, "body", "multipart part without Content-Disposition")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise ApiError(400, "body", "multipart part without a field name")
        if name not in self.rules:
            raise ApiError(422, name[:100], f"unknown form field; expected {', '.join(self.rules)}")
        if name in self.values:
            raise ApiError(400, name, "form field given twice")
        self.field, self._size = name, 0
        if self.rules[name].to_file:
            path = self.folder / name
            # O_EXCL and 0600: the file is new and only the server's user reads it.
            self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
            self.values[name] = path
        else:
            self._memory = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        rule = self.rules[self.field]
        self._size += end - start
        if self._size > rule.max_bytes:
            raise ApiError(413, self.field, f"over the limit of {rule.max_bytes} bytes ({rule.limit})")
        piece = memoryview(data)[start:end]
        if self._file is not None:
            self._file.write(piece)
        else:
            self._memory += piece

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())  # the job store adopts this file as it is
            self._file.close()
            self._file = None
        else:
            self.values[self.field] = bytes(self._memory)
            self._memory = None
        self.field = None

    def _end(self) -> None:
        self.complete = True
