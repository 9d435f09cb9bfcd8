"""Every error leaves as JSON: {"error": {"type": ..., "message": ...}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.errors import DrlaifError

log = logging.getLogger(__name__)


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "invalid_json", "request body is not valid JSON: " + "; ".join(
            str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors)
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return 422, "invalid_request", "; ".join(parts) + more


def install_error_handlers(app: FastAPI, on_reject=None) -> None:
    @app.exception_handler(DrlaifError)
    async def _drlaif(request: Request, exc: DrlaifError) -> JSONResponse:
        if on_reject is not None:
            on_reject(exc.code)
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, kind, message = _describe(exc)
        return error_response(status, kind, message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}")
