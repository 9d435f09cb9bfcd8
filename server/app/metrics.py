"""Prometheus metrics, on a registry of the app's own (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from drlaif.batching import BatchStats


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("drlaif_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "drlaif_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.items = Counter("drlaif_items_scored", "Items scored", ["rubric"], registry=self.registry)
        self.judge_text = Counter(
            "drlaif_items_addressing_judge", "Scored items whose response addresses the judge (read twice)",
            ["rubric"], registry=self.registry)
        self.cache_hits = Counter("drlaif_reward_cache_hits", "Label reads served from the reward cache",
                                  registry=self.registry)
        self.cache_misses = Counter("drlaif_reward_cache_misses", "Label reads computed (reward cache on)",
                                    registry=self.registry)
        self.reasoning_tokens = Counter(
            "drlaif_reasoning_tokens", "Rationale tokens the labeler generated (reasoning rubrics)", ["rubric"],
            registry=self.registry)
        self.pairs = Counter("drlaif_pairs_compared", "Pairs compared", ["rubric"], registry=self.registry)
        self.bad_reads = Counter("drlaif_bad_reads", "Backend batches refused for reads that are not "
                                 "log-probabilities (NaN, inf, wrong shape); their requests got 503",
                                 registry=self.registry)
        self.rejections = Counter("drlaif_rejections", "Requests refused", ["reason"], registry=self.registry)
        self.batch_size = Histogram(
            "drlaif_batch_sequences", "Sequences per backend batch", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("drlaif_batch_seconds", "Backend time per batch", registry=self.registry)
        self.queue_depth = Gauge("drlaif_queue_depth", "Sequences waiting for a batch", registry=self.registry)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.items)
        self.batch_seconds.observe(stats.seconds)

    def observe_cache(self, hits: int, misses: int) -> None:
        self.cache_hits.inc(hits)
        self.cache_misses.inc(misses)

    def render(self) -> bytes:
        return generate_latest(self.registry)
