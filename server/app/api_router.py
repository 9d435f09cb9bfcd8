"""Routes: thin wrappers that validate, call ScoringService, and serialise.

No `from __future__ import annotations` here: FastAPI must see the per-app request
model classes, which are closure variables, as real objects.
"""


from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from server.app import protocol
from server.app.serving import ScoringService

_ERRORS = {
    code: {"model": protocol.ErrorResponse}
    for code in (400, 401, 413, 422, 429, 503)
}


def build_router(service: ScoringService, models: protocol.RequestModels, auth) -> APIRouter:
    router = APIRouter()
    guarded = [Depends(auth)]
    ScoreRequest = models.score
    CompareRequest = models.compare
    RewardRequest = models.reward

    @router.post("/score", response_model=protocol.ScoreResponse, responses=_ERRORS, dependencies=guarded,
                 summary="Direct-RLAIF rewards for (prompt, response) items")
    async def score(body: ScoreRequest) -> protocol.ScoreResponse:
        return await service.score(body)

    @router.post("/compare", response_model=protocol.CompareResponse, responses=_ERRORS, dependencies=guarded,
                 summary="Pairwise preference P(A better) for (prompt, response_a, response_b) items")
    async def compare(body: CompareRequest) -> protocol.CompareResponse:
        return await service.compare(body)

    rubric_in_url = Query(None, description="Rubric to score with (OpenRLHF cannot send one in the body, "
                          "so it goes in the URL: /get_reward?rubric=harmless); the server's default when "
                          "omitted.")

    @router.post("/get_reward", response_model=protocol.RewardResponse, responses=_ERRORS,
                 dependencies=guarded, summary="OpenRLHF's remote reward protocol (--remote_rm_url)")
    async def get_reward(body: RewardRequest, rubric: str | None = rubric_in_url) -> protocol.RewardResponse:
        return await service.get_reward(body, rubric)

    @router.post("/render", response_model=protocol.RenderResponse, responses=_ERRORS, dependencies=guarded,
                 summary="The exact labeler input and label tokens for each item")
    async def render(body: ScoreRequest) -> protocol.RenderResponse:
        return await service.render(body)

    @router.get("/info", response_model=protocol.InfoResponse, dependencies=guarded)
    async def info() -> protocol.InfoResponse:
        return service.info()

    @router.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        service.metrics.queue_depth.set(service.scorer.batcher.depth if service.scorer else 0)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready", responses={503: {"model": protocol.ErrorResponse}})
    async def ready() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready"})
        if service.load_error is not None:
            message = f"the labeler failed to load: {service.load_error}"
        else:
            message = "the labeler is loading"
        return JSONResponse({"error": {"type": "not_ready", "message": message}}, status_code=503,
                            headers={"Retry-After": "5"})

    return router
