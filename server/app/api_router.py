"""Routes: thin wrappers that validate, call ScoringService, and serialise.

No `from __future__ import annotations` here: FastAPI must see the per-app request
model classes, which are closure variables, as real objects.
"""


from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from drlaif import protocol
from drlaif.errors import NOT_READY, RETRY_AFTER, ErrorType, with_status
from server.app.errors import error_response
from server.app.serving import ScoringService


def _errors(*statuses: int, only: tuple[ErrorType, ...] | None = None) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for these error statuses (``only`` these types, when given):
    ErrorResponse as application/json, described by the types the list in drlaif/errors.py
    answers with each status, and the headers they are sent with."""
    responses: dict[int | str, dict] = {}
    for status in statuses:
        kinds = [e for e in with_status(status) if only is None or e in only]
        headers = {name: {"description": value, "schema": {"type": "string"}}
                   for e in kinds for name, value in e.headers}
        if any(e.retry_after_s is not None for e in kinds):
            headers[RETRY_AFTER] = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        responses[status] = {"model": protocol.ErrorResponse,
                             "description": "; ".join(f"{e.type}: {e.description}" for e in kinds) + "."}
        if headers:
            responses[status]["headers"] = headers
    return responses


_SCORING_ERRORS = _errors(400, 401, 413, 421, 422, 429, 503, 504)
_RENDER_ERRORS = _errors(400, 401, 413, 421, 422, 503, 504)
_GUARDED_ERRORS = _errors(401, 421)
_NOT_READY = _errors(503, only=(NOT_READY,))
_METRICS = {200: {"description": "Prometheus text exposition format.",
                  "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
            **_GUARDED_ERRORS}


def build_router(service: ScoringService, models: protocol.RequestModels) -> APIRouter:
    """The API's routes. Auth is not here: server.app.auth's middleware guards every path
    but /health/*."""
    router = APIRouter()
    if models.rubrics is None:  # publish the loaded registry's rubric names as the schema's enum
        models = models.with_rubrics(service.rubrics.names,
                                     sorted(r.name for r in service.rubrics if r.compare is not None))
    ScoreRequest = models.score
    CompareRequest = models.compare
    RewardRequest = models.reward

    @router.post("/score", response_model=protocol.ScoreResponse, responses=_SCORING_ERRORS, summary="Direct-RLAIF rewards for (prompt, response) items")
    async def score(body: ScoreRequest) -> protocol.ScoreResponse:
        return await service.score(body)

    @router.post("/compare", response_model=protocol.CompareResponse, responses=_SCORING_ERRORS,
                 summary="Pairwise preference P(A better) for (prompt, response_a, response_b) items")
    async def compare(body: CompareRequest) -> protocol.CompareResponse:
        return await service.compare(body)

    rubric_in_url = Query(None, description="Rubric to score with (OpenRLHF cannot send one in the body, "
                          "so it goes in the URL: /get_reward?rubric=harmless); the server's default when "
                          "omitted.",
                          json_schema_extra={"enum": list(models.rubrics)} if models.rubrics else None)

    group_pairwise_in_url = Query(None, description="Judge the queries in their prompt groups, as /score's "
                                  "group_pairwise (true), or each alone (false); the rubric's default when "
                                  "omitted. A group needs at least 2 queries of one prompt in the request.")

    reward_field_in_url = Query("reward", description="Which read the rewards are: reward (the guarded read), "
                                "reward_robust (the read without text that addresses the judge) or "
                                "reward_as_written (undefended, for ablations); as drlaif-train --reward-field.")

    @router.post("/get_reward", response_model=protocol.RewardResponse, responses=_SCORING_ERRORS, summary="OpenRLHF's remote reward protocol (--remote_rm_url)")
    async def get_reward(request: Request, body: RewardRequest, rubric: str = rubric_in_url,
                         group_pairwise: bool | None = group_pairwise_in_url,
                         reward_field: Literal["reward", "reward_robust", "reward_as_written"] = reward_field_in_url,
                         ) -> protocol.RewardResponse:
        # The URL is the only place OpenRLHF lets a user say anything: a parameter that is not one
        # of these (a misspelling, or a trainer's setting such as on_reward_failure) would
        # otherwise be dropped without a word.
        unknown = sorted(set(request.query_params) - {"rubric", "group_pairwise", "reward_field"})
        if unknown:
            raise RequestValidationError([{"loc": ("query", name), "msg": "not a parameter of /get_reward (it "
                                           "takes rubric, group_pairwise and reward_field)"} for name in unknown])
        return await service.get_reward(body, rubric, group_pairwise, reward_field)

    @router.post("/render", response_model=protocol.RenderResponse, responses=_RENDER_ERRORS, summary="The exact labeler input and label tokens for each item")
    async def render(body: ScoreRequest) -> protocol.RenderResponse:
        return await service.render(body)

    if service.settings.ui:  # --no-ui: the page's files and this route are not served (404)
        RubricLabRequest = models.rubric_lab

        @router.post("/ui/rubric-lab/score", response_model=protocol.RubricLabResponse,
                     responses=_SCORING_ERRORS, summary="The playground's rubric lab: validate a rubric given "
                     "as YAML, as at startup, and score items under it without registering it")
        async def rubric_lab(body: RubricLabRequest) -> protocol.RubricLabResponse:
            return await service.rubric_lab(body)

    @router.get("/info", response_model=protocol.InfoResponse, responses=_GUARDED_ERRORS)
    async def info() -> protocol.InfoResponse:
        return service.info()

    @router.get("/metrics", response_class=Response, responses=_METRICS)
    async def metrics() -> Response:
        service.metrics.queue_depth.set(service.scorer.batcher.depth if service.scorer else 0)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/health/live", response_model=protocol.HealthStatus)
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready", response_model=protocol.HealthStatus, responses=_NOT_READY)
    async def ready() -> JSONResponse:
        message = service.readiness()
        if message is None:
            return JSONResponse({"status": "ready"})
        return error_response(NOT_READY, message)

    return router
