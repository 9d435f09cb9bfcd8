"""Optional bearer-token auth (constant-time comparison).

:class:`BearerAuthMiddleware` guards the whole app: with a key, every path but ``/health/*``
needs ``Authorization: Bearer <key>``: the API routes, ``/docs``, ``/redoc``,
``/openapi.json``, and any route added later, which is protected without having to ask
for it. Unknown paths answer 401 too, so a client without the key learns nothing about
which routes exist. The judge playground's static files (server.app.playground) are served
in front of this check: they hold no data, and every call the page makes sends the key.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from drlaif.errors import UNAUTHORIZED
from server.app.errors import error_response

OPEN_PREFIX = "/health/"  # liveness and readiness probes never need the key
MESSAGE = "missing or invalid API key (send 'Authorization: Bearer <key>')"


def _authorized(authorization: str | None, expected: bytes) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def route_path(scope: Scope) -> str:
    """The path the router matches (without the ASGI ``root_path`` prefix, if any)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class BearerAuthMiddleware:
    """ASGI middleware: 401 (JSON error, ``WWW-Authenticate: Bearer``) for every HTTP request
    outside ``/health/*`` without the key, before the request reaches any route; a
    pass-through without a key."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and self.expected is not None
                and not route_path(scope).startswith(OPEN_PREFIX)
                and not _authorized(Headers(scope=scope).get("authorization"), self.expected)):
            response = error_response(UNAUTHORIZED, MESSAGE)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
