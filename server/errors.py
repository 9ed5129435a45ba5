"""One error shape for every 4xx (and 503 / 507): ``{"detail": {"field": ..., "message": ...}}``.

``field`` names what was wrong: a request field (``steps``), a passes array (``depth``),
a form field (``passes``), a header (``authorization``, ``host``) or a path parameter
(``job_id``). 503 (with Retry-After) says a server-wide bound is reached for now; 507 says
the disk is full, and how much space the upload needs.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from zs_core.protocol import ProtocolError


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: ErrorDetail


class ApiError(Exception):
    def __init__(self, status_code: int, field: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{field}: {message}")
        self.status_code = status_code
        self.field = field
        self.message = message
        self.headers = headers


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(exc: BaseException) -> bool:
    """No space left, over a quota, or over the process's file-size limit (ulimit -f)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def insufficient_storage(exc: OSError, field: str, needed: int, folder: Path) -> ApiError:
    """507 for a write that failed for lack of space, saying how much the upload needs."""
    try:
        free = f"{shutil.disk_usage(folder).free} bytes are free"
    except OSError:
        free = "the free space is unknown"
    if exc.errno == errno.EFBIG:
        why = "the server's file-size limit (ulimit -f) stopped the write"
    else:
        why = f"no space left on the server's disk ({exc.strerror})"
    return ApiError(507, field, f"{why}: this upload needs {needed} bytes in {folder}, and {free}")


def busy(field: str, message: str, retry_after: int) -> ApiError:
    """503 with Retry-After: the server is at a bound shared by all clients; a retry later works."""
    return ApiError(503, field, f"{message}; retry in {retry_after} s", headers={"Retry-After": str(retry_after)})


def error_response(status_code: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": {"field": field, "message": message}}, status_code=status_code, headers=headers)


def protocol_message(exc: ProtocolError) -> str:
    """The message without the ``field: `` prefix ProtocolError puts in front."""
    text = str(exc)
    prefix = f"{exc.field}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status_code, exc.field, exc.message, exc.headers)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, exc: ProtocolError):
        return error_response(422, exc.field, protocol_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
        return error_response(422, ".".join(location) or "request", first.get("msg", "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Starlette's own 404 (unknown route) and 405 (wrong method) in the same shape.
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        field = "path" if exc.status_code in (404, 405) else "request"
        return error_response(exc.status_code, field, detail, getattr(exc, "headers", None))
