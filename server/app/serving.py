"""Request handling logic, free of FastAPI: loading, readiness, /score, /render, /info."""

from __future__ import annotations

import asyncio
import logging
import time

from server import __version__
from server.app import protocol
from server.app.metrics import Metrics
from server.backends import Backend, create_backend
from server.config import ServerSettings
from server.errors import NotReady
from server.rubrics import RubricRegistry
from server.scorer import BatchingLimits, Scorer

log = logging.getLogger(__name__)

WARMUP_ITEM = ("Say hello.", "Hello!")


def _items(request) -> list[tuple[str | list[dict[str, str]], str]]:
    """(prompt, response) pairs from a validated request, chat messages as plain dicts."""
    return [(item.prompt if isinstance(item.prompt, str) else [m.model_dump() for m in item.prompt],
             item.response) for item in request.items]


class ScoringService:
    """Owns the labeler's lifecycle and answers the API's questions."""

    def __init__(self, settings: ServerSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        # Parsed up front so a bad rubrics file fails before the model loads.
        self.rubrics = RubricRegistry.load(settings.rubrics, settings.default_rubric)
        self.scorer: Scorer | None = None
        self.ready = False
        self.load_error: BaseException | None = None

    async def start(self) -> None:
        """Load the backend off the event loop, compile rubrics, warm up, then become ready."""
        started = time.perf_counter()
        try:
            backend: Backend = await asyncio.to_thread(create_backend, self.settings)
            s = self.settings
            self.scorer = Scorer(
                backend, self.rubrics, max_input_tokens=s.max_input_tokens, truncate=s.truncate,
                batching=BatchingLimits(s.max_batch_items, s.max_batch_tokens, s.max_wait_ms / 1000,
                                        s.max_queue_items),
                on_batch=self.metrics.observe_batch,
            )
            self.scorer.batcher.start()
            await self.scorer.score(None, [WARMUP_ITEM])
        except BaseException as exc:
            self.load_error = exc
            log.exception("the labeler failed to load")
            raise
        self.ready = True
        info = backend.info
        log.info("ready in %.1fs: %s on %s/%s (%s), rubrics: %s", time.perf_counter() - started,
                 info.model, info.name, info.device, info.dtype, ", ".join(self.rubrics.names))

    async def stop(self) -> None:
        self.ready = False
        if self.scorer is not None:
            await self.scorer.batcher.stop()
            self.scorer.backend.close()

    def _scorer(self) -> Scorer:
        if not self.ready or self.scorer is None:
            raise NotReady()
        return self.scorer

    async def score(self, request) -> protocol.ScoreResponse:
        scorer = self._scorer()
        items = _items(request)
        self.metrics.queue_depth.set(scorer.batcher.depth)
        scored = await scorer.score(request.rubric, items)
        compiled = scorer.compiled(request.rubric)
        self.metrics.items.labels(compiled.rubric.name).inc(len(scored))
        return protocol.ScoreResponse(
            results=[
                protocol.ItemScore(
                    reward=s.result.reward, score=s.result.score, distribution=list(s.result.distribution),
                    label_mass=s.result.label_mass, input_tokens=s.input_tokens, truncated=s.truncated)
                for s in scored
            ],
            rubric=compiled.rubric.name,
            scale=protocol.ScaleInfo(min=compiled.scale.lo, max=compiled.scale.hi),
            model=scorer.backend.info.model,
        )

    async def render(self, request) -> protocol.RenderResponse:
        scorer = self._scorer()
        items = _items(request)
        compiled, encoded = await asyncio.to_thread(scorer.encode, request.rubric, items)
        labels = {label: list(ids) for label, ids in compiled.trie.label_tokens.items()}
        return protocol.RenderResponse(
            results=[protocol.RenderedItem(text=e.text, input_ids=list(e.input_ids), label_token_ids=labels,
                                           truncated=e.truncated) for e in encoded],
            rubric=compiled.rubric.name,
        )

    def info(self) -> protocol.InfoResponse:
        s = self.settings
        backend_info = self.scorer.backend.info if self.scorer else None
        return protocol.InfoResponse(
            version=__version__,
            model=backend_info.model if backend_info else (s.model or "embedded"),
            backend=s.backend,
            dtype=backend_info.dtype if backend_info else s.dtype,
            device=backend_info.device if backend_info else s.device,
            default_rubric=self.rubrics.default,
            rubrics=[
                protocol.RubricInfo(name=r.name, description=r.description,
                                    scale=protocol.ScaleInfo(min=r.scale.min, max=r.scale.max))
                for r in sorted(self.rubrics, key=lambda r: r.name)
            ],
            limits={
                "max_items_per_request": s.max_items_per_request,
                "max_field_chars": s.max_field_chars,
                "max_input_tokens": self.scorer.encoder.max_input_tokens if self.scorer else s.max_input_tokens,
                "truncate": s.truncate,
                "max_batch_items": s.max_batch_items,
                "max_queue_items": s.max_queue_items,
            },
            ready=self.ready,
        )
