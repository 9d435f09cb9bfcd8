"""Routes: thin wrappers that validate, call ScoringService, and serialise.

No `from __future__ import annotations` here: FastAPI must see the per-app request
model classes, which are closure variables, as real objects.
"""


from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from server import protocol
from server.app.serving import ScoringService

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}
# Every error has the same JSON body (server/app/errors.py); the description lists its error.type values.
_ERROR_DOCS = {
    400: ("invalid_json: the body is not valid JSON.", None),
    401: ("The server has an API key and the request has no valid 'Authorization: Bearer <key>'.",
          {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}),
    413: (("body_too_large (the body is over --max-body-bytes), input_too_long (an item does not fit "
          "max_input_tokens and the server runs with --no-truncate)."), None),
    422: (("invalid_request (the body or a parameter breaks the schema: a missing or extra field, a wrong "
          "type, a limit), unknown_rubric, rubric_cannot_compare, group_too_small (group_pairwise with a prompt "
          "that has one response), invalid_rubric (the request's reasoning "
          "settings do not validate, do not fit max_input_tokens, or have a stop string the tokenizer cannot "
          "match; the rubric lab's rubric is not one valid rubric), query_mismatch (/get_reward: a query "
          "that does not contain its prompt)."), None),
    429: ("overloaded: the request's items do not fit beside the items in flight (--max-queue-items).",
          _RETRY_AFTER),
    503: (("not_ready (the labeler is loading), shutting_down, backend_error (the labeler failed, "
          "stalled or gave an invalid read on the request's batch), backend_stuck (a call past "
          "--backend-timeout-s holds the model; readiness is 503 until it returns)."), _RETRY_AFTER),
    504: (("deadline_exceeded: not answered within --request-timeout-s; the request's queued work is "
          "dropped."), None),
}


def _errors(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for these error statuses: ErrorResponse as application/json."""
    responses: dict[int | str, dict] = {}
    for code in codes:
        description, headers = _ERROR_DOCS[code]
        responses[code] = {"model": protocol.ErrorResponse, "description": description}
        if headers:
            responses[code]["headers"] = headers
    return responses


_SCORING_ERRORS = _errors(400, 401, 413, 422, 429, 503, 504)
_RENDER_ERRORS = _errors(400, 401, 413, 422, 503, 504)
_GUARDED_ERRORS = _errors(401)
_NOT_READY = {503: {**_errors(503)[503],
                    "description": "not_ready: the labeler is loading or failed to load, its engine died, a "
                    "backend call is stuck past --backend-timeout-s, or the server is shutting down."}}
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

    @router.post("/get_reward", response_model=protocol.RewardResponse, responses=_SCORING_ERRORS, summary="OpenRLHF's remote reward protocol (--remote_rm_url)")
    async def get_reward(body: RewardRequest, rubric: str = rubric_in_url) -> protocol.RewardResponse:
        return await service.get_reward(body, rubric)

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
        return JSONResponse({"error": {"type": "not_ready", "message": message}}, status_code=503,
                            headers={"Retry-After": "5"})

    return router
