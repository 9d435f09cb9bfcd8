"""The judge playground's static files: a page at /ui (server/app/ui/) with no build step.

:class:`PlaygroundFiles` serves them in front of the API key check (see server.app.auth):
a browser opening /ui cannot send an ``Authorization`` header, and the files hold no data.
Everything the page shows comes from API calls that send the key the user typed into the
page. Only GET and HEAD of these exact paths are answered here; every other request, the
rubric lab's route included, goes on to the key check and the routes.
"""

from __future__ import annotations

from importlib import resources

from starlette.types import ASGIApp, Receive, Scope, Send

from server.app.auth import route_path

PREFIX = "/ui"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
# The page runs only its own script and talks only to this server: no inline script, no other
# origin, no framing (it holds an API key while open).
_HEADERS = [
    (b"content-security-policy", (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                  b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def _load() -> dict[str, tuple[bytes, str]]:
    """Every file of server/app/ui by the path it is served at (index.html at /ui/)."""
    files = {}
    for entry in resources.files("server.app").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if suffix in _TYPES:
            path = f"{PREFIX}/" + ("" if entry.name == "index.html" else entry.name)
            files[path] = (entry.read_bytes(), _TYPES[suffix])
    return files


class PlaygroundFiles:
    """ASGI middleware: GET or HEAD /ui/ (the page) and /ui/<file> (its script and style);
    /ui itself redirects to /ui/, so that the page's relative links resolve under any path
    prefix a proxy adds."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.files = _load()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path == PREFIX:
            await _send(send, 307, [(b"location", b"ui/")], b"", scope["method"])
        elif path in self.files:
            body, media_type = self.files[path]
            await _send(send, 200, [(b"content-type", media_type.encode()), *_HEADERS], body, scope["method"])
        else:
            await self.app(scope, receive, send)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, method: str) -> None:
    """One whole response; a HEAD gets the headers a GET would, without the body."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
