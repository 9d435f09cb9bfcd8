"""Cancel a request's work when its client disconnects.

Starlette runs an endpoint to the end even after the client has gone, so a trainer that
timed out and retried would have its abandoned items scored anyway, ahead of the retry.
This ASGI middleware watches the connection once the request body has been read; on
``http.disconnect`` it cancels the request's task, which cancels its futures in the
batcher, so its queued items are dropped before they reach the backend. That is the
client's doing, not a server fault: it is logged at info level and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class CancelOnDisconnect:
    """ASGI middleware: cancel an HTTP request's handling when its client disconnects."""

    def __init__(self, app, on_cancel: Callable[[str], None] | None = None):
        self.app = app
        self.on_cancel = on_cancel  # called with the request path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_read = asyncio.Event()

        async def receive_body():
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read.set()
            return message

        answered = False

        async def send_response(message):
            nonlocal answered
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        handler = asyncio.ensure_future(self.app(scope, receive_body, send_response))
        gone = False

        async def watch() -> None:
            nonlocal gone
            await body_read.wait()
            # After the body, the server's only message for this request is the disconnect,
            # which uvicorn also sends once the response is complete: that one is no reason.
            while (await receive())["type"] != "http.disconnect":
                pass
            if not answered:
                gone = True
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not gone:
                raise  # the server itself is cancelling us (shutdown)
            log.info("client went away during %s %s; its queued work was dropped", scope["method"], scope["path"])
            if self.on_cancel is not None:
                self.on_cancel(scope["path"])
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
