"""The HTTP layer: FastAPI app factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request

from drlaif.protocol import request_models
from server import __version__
from server.app.api_router import build_router
from server.app.auth import AllowedHostsMiddleware, BearerAuthMiddleware
from server.app.body_limit import BodyLimitMiddleware
from server.app.disconnect import CancelOnDisconnect
from server.app.errors import install_error_handlers
from server.app.metrics import Metrics
from server.app.playground import PlaygroundFiles
from server.app.serving import ScoringService
from server.config import ServerSettings

log = logging.getLogger(__name__)


def add_access_checks(app: FastAPI, settings: ServerSettings, allowed_hosts: frozenset[str] | None,
                      on_reject: Callable[[str], None] | None = None) -> None:
    """Put the checks of who may call in front of ``app``'s routes and of the middleware added
    so far: the API key, the playground's files in front of it (with ``--ui``), and the Host
    check (``allowed_hosts``, None for any) in front of both. None of them reads the body, so
    a request they refuse is answered before its body is read. ``on_reject`` is called with the
    error type of each Host refusal."""
    app.add_middleware(BearerAuthMiddleware, api_key=settings.resolved_api_key())
    if settings.ui:
        # Outside the key check: a browser opening /ui cannot send the key, and the page's files
        # hold no data; every call the page makes sends the key typed into it.
        app.add_middleware(PlaygroundFiles)
    app.add_middleware(AllowedHostsMiddleware, allowed=allowed_hosts, on_reject=on_reject)


def create_app(settings: ServerSettings, on_fatal: Callable[[], None] | None = None, *,
               load_before_serving: bool = False, check_hosts: bool = True) -> FastAPI:
    """Build the app; the labeler loads in the background once the server is up, so that
    health probes answer while it loads, or with ``load_before_serving`` before the app's
    startup completes (a Ray Serve replica then takes traffic only once it can score).
    ``check_hosts=False`` leaves the Host check to a front end that makes it (the Ray ingress).

    A labeler that cannot load, or whose engine dies, will never be ready: ``on_fatal`` is
    called so the runner can stop the server (``drlaif-server`` then exits with status 1).
    """

    def _check_loaded(task: asyncio.Task) -> None:
        if on_fatal is not None and not task.cancelled() and task.exception() is not None:
            on_fatal()
    metrics = Metrics()

    def count_rejection(reason: str) -> None:
        metrics.rejections.labels(reason).inc()

    service = ScoringService(settings, metrics, on_fatal=on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start(), name="drlaif-load")
        loading.add_done_callback(_check_loaded)
        if load_before_serving:
            await asyncio.shield(loading)
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
            await service.stop()

    app = FastAPI(title="drlaif reward server", version=__version__, lifespan=lifespan,
                  description="Direct RLAIF: rewards in [-1, 1] from a labeler LLM's score probabilities.")
    app.state.service = service
    install_error_handlers(app, on_reject=count_rejection)
    app.include_router(build_router(
        service, request_models(settings.max_items_per_request, settings.max_field_chars,
                                # OpenRLHF sends its whole rollout batch in one /get_reward call.
                                max_queries=settings.max_queue_items)))
    # Inside `observe` (which counts their 421s, 401s and 413s), outside every route: the Host
    # check and the key guard all but /health/*, /docs and /openapi.json included; then an
    # oversized body is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, on_reject=count_rejection)
    add_access_checks(app, settings, settings.allowed_host_names() if check_hosts else None,
                      on_reject=count_rejection)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = route.path if route is not None else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    # Outermost, so that a client's disconnect cancels everything its request started.
    app.add_middleware(CancelOnDisconnect, on_cancel=lambda path: metrics.rejections.labels("client_gone").inc())

    return app
