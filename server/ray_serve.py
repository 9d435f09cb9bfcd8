"""drlaif on Ray Serve: N replicas of the scorer behind Ray Serve's HTTP proxy, at one URL.

Each replica is the server's own FastAPI app (``create_app``, the same routes, service,
batching, auth and metrics as ``drlaif-server``), owned by a Ray Serve deployment that
places it (``num_cpus``, ``num_gpus``; a tensor-parallel vLLM replica gets a placement
group of one bundle per GPU), scales it on ongoing requests, and replaces a replica that
dies or whose labeler can never serve again (its health check fails). A replica takes
traffic only once its labeler has loaded and warmed up. A small ingress deployment behind
Ray's HTTP proxy checks the Host and the API key before it reads a body, bounds the bodies
it holds, hands each request to a replica through Ray's router and moves it to another when
its replica dies under it.

Start it with Ray's own CLI and this module's application builder; every argument that is
not a deployment setting (see :class:`FleetSettings`) is a server setting, as
``drlaif-server`` names it with underscores::

    serve run server.ray_serve:build replicas=2 num_cpus=1 backend=vllm model=Qwen/Qwen2.5-7B-Instruct

or with a Serve config file (``serve deploy docker/ray-serve.yaml``, the same arguments
under ``args:``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from drlaif.errors import INGRESS_FULL, REPLICA_UNAVAILABLE
from server.app import add_access_checks, create_app
from server.app.body_limit import BodyLimitMiddleware
from server.app.errors import error_response, install_error_handlers
from server.config import ServerSettings

log = logging.getLogger(__name__)

# How long /info may report a replica count before it asks Ray's controller again.
_COUNT_TTL_S = 5.0


class FleetSettings(BaseModel):
    """How the replicas are deployed; the server settings travel beside these."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1, description="Replicas when not autoscaling.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica (with --backend vllm and "
                            "tensor_parallel_size > 1: one per shard, in a placement group).")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per replica (CPU replicas that "
                                      "share a machine: one each). Unset: torch's default.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica takes at once; the scorer "
                                      "micro-batches them, so more than Ray's default of 5.")
    min_replicas: int | None = Field(None, ge=0, description="Autoscaling: set with max_replicas to scale on "
                                     "ongoing requests instead of running a fixed number.")
    max_replicas: int | None = Field(None, ge=1, description="Autoscaling: the most replicas.")
    target_ongoing_requests: float = Field(16.0, gt=0, description="Autoscaling: ongoing requests per replica "
                                           "that Ray aims for.")
    ingress_bytes_in_flight: int = Field(
        1 << 30, ge=1024, description="Request-body bytes the ingress holds at once, over all its requests "
        "(a body is held until its replica answers; one sent without Content-Length counts as max_body_bytes); "
        "a body that does not fit beside them gets 429 with Retry-After. At least max_body_bytes. The default, "
        "1 GiB, holds 16 bodies of the default max_body_bytes, or thousands of ordinary /score requests.")

    @model_validator(mode="after")
    def _autoscaling_pair(self) -> FleetSettings:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("min_replicas and max_replicas go together (autoscaling)")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def ingress_options(self) -> dict[str, Any]:
        """Ray Serve options of the ingress deployment. It takes as many requests at once as the
        replicas can (at their most, when autoscaling): a request it took past them could only
        wait in it for a replica, its body held against ingress_bytes_in_flight, and refuse
        another that a replica is about to have room for; past it, requests wait in Ray's proxy."""
        return {"max_ongoing_requests": (self.max_replicas or self.replicas) * self.max_ongoing_requests}

    def deployment_options(self, settings: ServerSettings) -> dict[str, Any]:
        """Ray Serve options of the replica deployment."""
        options: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests,
                                   "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}}
        if self.min_replicas is not None:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.replicas
        shards = settings.tensor_parallel_size
        if settings.backend == "vllm" and shards > 1:
            # The replica and its vLLM workers on one node: the replica's bundle, then one GPU per shard.
            options["ray_actor_options"] = {"num_cpus": self.num_cpus, "num_gpus": 0}
            options["placement_group_bundles"] = [{"CPU": self.num_cpus}] + [{"GPU": 1.0}] * shards
            options["placement_group_strategy"] = "STRICT_PACK"
        return options


@dataclass(frozen=True)
class ForwardedRequest:
    """An HTTP request as the ingress hands it to a replica."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class ForwardedResponse:
    """A replica's answer to a ForwardedRequest."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


# Headers that describe one connection, not the request or response.
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@serve.deployment(name="labeler", health_check_period_s=5, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=60)
class DrlaifReplica:
    """One replica: the server's own app on one labeler, called in process (it runs the app's
    lifespan itself, so the replica is up only once its labeler is loaded and warm)."""

    async def __init__(self, settings: dict[str, Any], torch_threads: int | None = None):
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        # The ingress checks the Host; a replica sees the one its in-process client sends.
        app = create_app(ServerSettings(**settings), load_before_serving=True, check_hosts=False)
        self._service = app.state.service
        self._service.replica_count = self._replica_count
        self._count, self._counted_at = 1, -_COUNT_TTL_S
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._lifespan = app.router.lifespan_context(app)
        await self._lifespan.__aenter__()
        # An exception in the app is answered by its own handlers (a JSON 500), not raised here.
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                         base_url="http://replica")

    async def handle(self, request: ForwardedRequest) -> ForwardedResponse:
        """Answer one HTTP request with the app, as drlaif-server would."""
        response = await self._client.request(request.method, request.path, params=request.query,
                                              headers=request.headers, content=request.body)
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_HEADERS]
        return ForwardedResponse(response.status_code, [*headers, ("x-drlaif-replica", self._replica)],
                                 response.content)

    def check_health(self) -> None:
        """Ray replaces a replica whose labeler can never serve again (failed to load, engine dead,
        a call stuck past --stuck-exit-s)."""
        if self._service.fatal_error is not None:
            raise RuntimeError(self._service.fatal_error)

    async def __del__(self) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)

    def _replica_count(self) -> int:
        """Running replicas of this deployment, as Ray's controller reports them (cached briefly)."""
        now = time.monotonic()
        if now - self._counted_at >= _COUNT_TTL_S:
            self._counted_at = now
            try:
                context = serve.get_replica_context()
                deployment = serve.status().applications[context.app_name].deployments[context.deployment]
                self._count = deployment.replica_states.get("RUNNING", 0)
            except Exception as exc:  # noqa: BLE001 - /info keeps the last count rather than failing
                log.warning("could not read the replica count from Ray's controller: %r", exc)
        return self._count


class BodyBudget:
    """ASGI middleware of the ingress: the request bodies it holds at once stay within
    ``max_bytes``, each counted from its headers before a byte of it is read (its
    Content-Length; ``max_body_bytes`` when it is sent without one, chunked) until its answer
    is sent, since the ingress keeps the body to send it again if its replica dies. A body
    that does not fit is refused with 429 and Retry-After at once rather than made to wait:
    Ray's proxy reads a body as it arrives whoever waits for it, so a waiting request would
    pile its body up there instead. A request without a body passes free (the probes)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_body_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_body_bytes = max_body_bytes
        self.held = 0  # only the ingress's event loop changes it, with no await in between

    def _size(self, headers: Headers) -> int:
        """The bytes a request's body is counted as (an oversized one: the limit, and the body
        limit behind refuses it)."""
        declared = headers.get("content-length", "")
        if declared.isdigit():
            return min(int(declared), self.max_body_bytes)
        return self.max_body_bytes if declared or "transfer-encoding" in headers else 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = self._size(Headers(scope=scope)) if scope["type"] == "http" else 0
        if self.held + size > self.max_bytes:
            message = (f"the ingress holds {self.held} bytes of request bodies and this one counts {size} "
                       f"(ingress_bytes_in_flight={self.max_bytes}); retry shortly")
            await error_response(INGRESS_FULL, message)(scope, receive, send)
            return
        self.held += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.held -= size


@serve.deployment(name="drlaif")
@serve.ingress()
class DrlaifIngress:
    """Ray Serve's HTTP proxy answers a request whose replica died under it with a plain 500;
    this ingress moves such a request to another replica instead (Ray's handle routes to the
    less loaded of two), and answers 503 with Retry-After only when none can take it.

    In front of that it makes the server's own checks before it reads a body: the Host
    (``allowed_hosts``, only when set: Ray's proxy, not ``host``, binds the address here), the
    API key (the playground's files served here, as by a replica), then the body budget
    (:class:`BodyBudget`) and the body limit. The replicas check the key and the size again."""

    def __init__(self, replicas: DeploymentHandle, settings: dict[str, Any], bytes_in_flight: int,
                 attempts: int = 3):
        self._replicas = replicas
        self._settings = ServerSettings(**settings)
        self._bytes_in_flight = bytes_in_flight
        self._attempts = attempts

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The ingress's app, which Ray Serve runs once this replica is constructed."""
        settings = self._settings
        app = FastAPI(title="drlaif on Ray Serve", docs_url=None, redoc_url=None, openapi_url=None)
        install_error_handlers(app)
        # A Starlette route: Ray copies this class by value, without the names its annotations use.
        app.add_route("/{path:path}", self._forward, methods=["GET", "POST", "HEAD"], include_in_schema=False)
        app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
        app.add_middleware(BodyBudget, max_bytes=self._bytes_in_flight, max_body_bytes=settings.max_body_bytes)
        add_access_checks(app, settings, settings.allowed_host_names() if settings.allowed_hosts else None)
        return app

    async def _forward(self, request: Request) -> Response:
        forwarded = ForwardedRequest(request.method, "/" + request.path_params["path"],
                                     list(request.query_params.multi_items()),
                                     [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS],
                                     await request.body())
        for attempt in range(1, self._attempts + 1):
            try:
                answer: ForwardedResponse = await self._replicas.handle.remote(forwarded)
            except (RayActorError, ActorUnavailableError) as exc:
                log.warning("a labeler replica died under %s %s (attempt %d of %d): %s",
                            request.method, request.url.path, attempt, self._attempts, type(exc).__name__)
                continue
            return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))
        return error_response(REPLICA_UNAVAILABLE, f"no labeler replica answered in {self._attempts} attempts "
                              "(replicas died under the request); retry shortly")


def build(args: dict[str, Any]) -> Application:
    """The application for ``serve run server.ray_serve:build key=value ...`` or a Serve config
    file's ``import_path``: deployment settings (FleetSettings) and server settings, checked
    here, before any replica starts."""
    fleet_keys = set(FleetSettings.model_fields)
    fleet = FleetSettings(**{k: v for k, v in args.items() if k in fleet_keys})
    server = {k: v for k, v in args.items() if k not in fleet_keys}
    unknown = sorted(set(server) - set(ServerSettings.model_fields))
    if unknown:  # ServerSettings ignores unknown keys (environment variables): a typo must not pass here
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}: expected deployment settings "
                         f"({', '.join(sorted(fleet_keys))}) or server settings (drlaif-server's flags, "
                         "with underscores)")
    settings = ServerSettings(**server)  # raises on a bad setting, naming it
    if fleet.ingress_bytes_in_flight < settings.max_body_bytes:
        raise ValueError(f"ingress_bytes_in_flight ({fleet.ingress_bytes_in_flight}) must be at least "
                         f"max_body_bytes ({settings.max_body_bytes}): a body of that size could never pass the ingress")
    replicas = DrlaifReplica.options(**fleet.deployment_options(settings)).bind(server, fleet.torch_threads)
    return DrlaifIngress.options(**fleet.ingress_options()).bind(replicas, server, fleet.ingress_bytes_in_flight)
