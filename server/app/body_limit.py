"""Refuse request bodies over ``max_body_bytes`` with 413, before anything parses them.

A body with a ``Content-Length`` over the limit is refused from its headers, without
reading a byte of it. A body without one (``Transfer-Encoding: chunked``) is read here,
counting, and refused as soon as it passes the limit; one within it is handed on to the
app unchanged. Either way no more than ``max_body_bytes`` of a body is ever held in
memory, however long the client keeps sending (the server discards the rest).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drlaif.errors import BODY_TOO_LARGE
from server.app.errors import error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, on_reject=None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject  # called with BODY_TOO_LARGE.type for each refused request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _declared_length(Headers(scope=scope).get("content-length"))
        if length is not None:
            # The HTTP server never delivers more body than Content-Length announces, so the
            # header is the whole check.
            if length > self.max_body_bytes:
                await self._refuse(f"{length} bytes", scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(f"more than {self.max_body_bytes} bytes", scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, size: str, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject(BODY_TOO_LARGE.type)
        message = (f"the request body is {size}, over the server's limit of {self.max_body_bytes} bytes "
                   "(--max-body-bytes); send fewer or shorter items per request")
        await error_response(BODY_TOO_LARGE, message)(scope, receive, send)


def _declared_length(header: str | None) -> int | None:
    """Content-Length as a number; None when absent (or unreadable: then the body is counted)."""
    try:
        return int(header) if header is not None else None
    except ValueError:
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body as one message, then the client's own
    (for ``http.disconnect``)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
