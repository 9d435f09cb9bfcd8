"""Who may call the server: the optional bearer token (constant-time comparison) and the
optional list of Host names.

:class:`BearerAuthMiddleware` guards the whole app: with a key, every path but ``/health/*``
needs ``Authorization: Bearer <key>``: the API routes, ``/docs``, ``/redoc``,
``/openapi.json``, and any route added later, which is protected without having to ask
for it. Unknown paths answer 401 too, so a client without the key learns nothing about
which routes exist. The judge playground's static files (server.app.playground) are served
in front of this check: they hold no data, and every call the page makes sends the key.

:class:`AllowedHostsMiddleware`, outside both, answers only requests whose ``Host`` names the
server (``--allowed-hosts``): a page that rebinds its own name to the server's address
(DNS rebinding) sends its own name, and is refused before anything else looks at it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from drlaif.errors import HOST_NOT_ALLOWED, UNAUTHORIZED
from server.app.errors import error_response
from server.config import normalize_host

OPEN_PREFIX = "/health/"  # liveness and readiness probes never need the key, and answer any Host
MESSAGE = "missing or invalid API key (send 'Authorization: Bearer <key>')"


def _authorized(authorization: str | None, expected: bytes) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def route_path(scope: Scope) -> str:
    """The path the router matches (without the ASGI ``root_path`` prefix, if any)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _guarded(scope: Scope) -> bool:
    """An HTTP request outside ``/health/*``."""
    return scope["type"] == "http" and not route_path(scope).startswith(OPEN_PREFIX)


class BearerAuthMiddleware:
    """ASGI middleware: 401 (JSON error, ``WWW-Authenticate: Bearer``) for every HTTP request
    outside ``/health/*`` without the key, before the request reaches any route or anything
    reads its body; a pass-through without a key."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.expected is not None and _guarded(scope)
                and not _authorized(Headers(scope=scope).get("authorization"), self.expected)):
            response = error_response(UNAUTHORIZED, MESSAGE)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def request_host(host_header: str | None) -> str | None:
    """The host part of a ``Host`` header (port dropped, normalized); None without one."""
    if not host_header:
        return None
    if host_header.startswith("["):  # an IPv6 address, [::1]:8000
        host, bracket, _ = host_header.partition("]")
        host += bracket
    elif host_header.count(":") == 1:
        host = host_header.partition(":")[0]
    else:
        host = host_header
    return normalize_host(host)


class AllowedHostsMiddleware:
    """ASGI middleware: 421 (JSON error) for every HTTP request outside ``/health/*`` whose
    ``Host`` is not one of ``allowed`` (the port is not compared: a published or forwarded
    port changes it, and a rebinding page uses the server's own); a pass-through when
    ``allowed`` is None. ``on_reject`` is called with the error's type for each refusal."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None,
                 on_reject: Callable[[str], None] | None = None):
        self.app = app
        self.allowed = allowed
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is not None and _guarded(scope):
            host = request_host(Headers(scope=scope).get("host"))
            if host not in self.allowed:
                if self.on_reject is not None:
                    self.on_reject(HOST_NOT_ALLOWED.type)
                named = f"the host {host!r}" if host else "a request without a Host header"
                message = (f"this server does not answer to {named}; add the host name its clients use to "
                           "--allowed-hosts (DRLAIF_ALLOWED_HOSTS)")
                await error_response(HOST_NOT_ALLOWED, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)
