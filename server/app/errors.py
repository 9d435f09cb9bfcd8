"""Every error leaves as JSON: {"error": {"type": ..., "message": ...}}, its type one of
drlaif.errors' list, with the status and headers the list gives it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from drlaif.errors import HTTP_ERROR, INTERNAL_ERROR, INVALID_JSON, INVALID_REQUEST, ErrorType
from server.errors import DrlaifError

log = logging.getLogger(__name__)


def error_response(error: ErrorType, message: str, *, retry_after_s: int | None = None,
                   status: int | None = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The answer for one error of the list: its body, its status (``status`` for a type with
    several), and its headers (Retry-After, ``retry_after_s`` where the list leaves it to the
    caller) on top of ``headers``."""
    return JSONResponse(error.body(message), status_code=error.status if status is None else status,
                        headers={**(headers or {}), **error.response_headers(retry_after_s)} or None)


def _describe(exc: RequestValidationError) -> tuple[ErrorType, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return INVALID_JSON, "request body is not valid JSON: " + "; ".join(
            str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors)
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return INVALID_REQUEST, "; ".join(parts) + more


def install_error_handlers(app: FastAPI, on_reject=None) -> None:
    """Answer DrlaifError, a request that breaks the schema, Starlette's HTTP errors (404, 405)
    and anything unexpected (500) in the JSON error shape; ``on_reject`` is called with the
    type of each DrlaifError (for the rejections metric)."""

    @app.exception_handler(DrlaifError)
    async def _drlaif(request: Request, exc: DrlaifError) -> JSONResponse:
        if on_reject is not None:
            on_reject(exc.code)
        return error_response(exc.error, exc.message, retry_after_s=exc.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*_describe(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(HTTP_ERROR, str(exc.detail), status=exc.status_code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
