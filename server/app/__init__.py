"""The HTTP layer: FastAPI app factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request

from server import __version__
from server.app.api_router import build_router
from server.app.auth import bearer_auth
from server.app.errors import install_error_handlers
from server.app.metrics import Metrics
from server.app.protocol import request_models
from server.app.serving import ScoringService, max_compare_items
from server.config import ServerSettings

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    """Build the app; the labeler loads in the background once the server is up.

    A labeler that cannot load will never be ready: ``on_load_failure`` is called so
    the runner can stop the server (``drlaif-server`` then exits with status 1).
    """

    def _check_loaded(task: asyncio.Task) -> None:
        if on_load_failure is not None and not task.cancelled() and task.exception() is not None:
            on_load_failure()
    metrics = Metrics()
    service = ScoringService(settings, metrics)
    auth = bearer_auth(settings.resolved_api_key())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start(), name="drlaif-load")
        loading.add_done_callback(_check_loaded)
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
    install_error_handlers(app, on_reject=lambda reason: metrics.rejections.labels(reason).inc())
    app.include_router(build_router(
        service, request_models(settings.max_items_per_request, settings.max_field_chars,
                                max_compare_items=max_compare_items(settings),
                                # OpenRLHF sends its whole rollout batch in one /get_reward call.
                                max_queries=settings.max_queue_items), auth))

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = route.path if route is not None else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    return app
