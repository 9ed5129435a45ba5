"""One error shape for every 4xx: ``{"detail": {"field": ..., "message": ...}}``.

``field`` names what was wrong: a request field (``steps``), a passes array (``depth``),
a form field (``passes``), a header (``authorization``) or a path parameter (``job_id``).
"""

from __future__ import annotations

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
