"""A deterministic reward server that speaks drlaif's /score contract, for trainer benchmarks,
the over-optimisation demo and the trainer's tests.

A rule on the response text stands in for the labeler, so that learning curves measure the
trainer alone (no labeler noise, no model on the server side). Results carry every field of a
drlaif /score result (one label read, so the reads as written and robust agree), built and
checked with the wire model in drlaif/protocol.py. Run:

    python bench/rule_reward_server.py PORT [--rule NAME] [--fail-share S]

Rules:
  second_person  0.2 + 0.8 * min(1, uses of "you"/"your"/"yours" / 3): addresses the reader.
  brevity        1.0 for at most 8 words, falling linearly to 0.2 at 40 words or more.
  shortest       1 - 2 * min(1, words / 30): the empty answer scores 1, thirty words or more -1.
  terse          shortest, but the empty answer scores -1: the best is one word (or one run of symbols).
  keyword        -1 + 0.5 * the uses of "great" (up to 4): the policy need only say "great".

The last two are gameable on purpose: bench/overoptimisation.py trains against one, with the
real labeler as the monitor. ``--fail-share S`` refuses, for good, any request that holds an
item whose response hashes into the first S of the hash range (503 ``backend_error``, so a
client retries it until its deadline): fault injection for ``--on-reward-failure drop``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drlaif.protocol import ItemScore, ScaleInfo, ScoreResponse

_YOU = re.compile(r"\byou(?:r|rs)?\b", re.IGNORECASE)
_GREAT = re.compile(r"\bgreat\b", re.IGNORECASE)


def second_person(response: str) -> float:
    return 0.2 + 0.8 * min(1.0, len(_YOU.findall(response)) / 3)


def brevity(response: str) -> float:
    words = len(response.split())
    return 1.0 - 0.8 * min(1.0, max(0, words - 8) / 32)


def shortest(response: str) -> float:
    return 1.0 - 2.0 * min(1.0, len(response.split()) / 30)


def terse(response: str) -> float:
    """shortest, but an empty answer is no answer (-1): the exploit is the shortest non-empty one."""
    return shortest(response) if response.split() else -1.0


def keyword(response: str) -> float:
    return -1.0 + 0.5 * min(4, len(_GREAT.findall(response)))


RULES: dict[str, Callable[[str], float]] = {"second_person": second_person, "brevity": brevity,
                                             "shortest": shortest, "terse": terse, "keyword": keyword}


def score_result(reward: float) -> ItemScore:
    """A complete /score result for this reward: one read, all its mass on the nearest label."""
    score = 5.5 + 4.5 * reward
    distribution = [0.0] * 10
    distribution[min(9, max(0, round(score) - 1))] = 1.0
    return ItemScore(reward=reward, score=score, distribution=distribution, label_mass=1.0, label_entropy=0.0,
                     reward_as_written=reward, reward_robust=reward, judge_spans=0, input_tokens=1,
                     truncated=False, cached=False)


def score_response(rewards: list[float], rubric: str | None, model: str) -> dict:
    """A complete /score answer, checked against the wire model."""
    return ScoreResponse(results=[score_result(r) for r in rewards], rubric=rubric or "general",
                         scale=ScaleInfo(min=1, max=10), model=model).model_dump(mode="json")


def doomed(response: str, share: float) -> bool:
    """Whether ``--fail-share share`` refuses this response (the same answer every time)."""
    return int(hashlib.sha256(response.encode()).hexdigest()[:8], 16) / 0x100000000 < share


def make_app(reward: Callable[[str], float], name: str, fail_share: float = 0.0) -> FastAPI:
    """The /score app for ``reward(response)``; also used by the trainer tests' fixtures."""
    app = FastAPI()
    model = f"rule:{name}"

    @app.get("/health/live")
    @app.get("/health/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.get("/info")
    def info() -> dict:
        return {"model": model, "limits": {"max_items_per_request": 64}}

    @app.post("/score")
    def score(body: dict):
        responses = [item["response"] for item in body["items"]]
        if any(doomed(r, fail_share) for r in responses):
            return JSONResponse({"error": {"type": "backend_error", "message": "injected failure"}},
                                status_code=503, headers={"Retry-After": "0"})
        return score_response([reward(r) for r in responses], body.get("rubric"), model)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--rule", choices=sorted(RULES), default="second_person")
    parser.add_argument("--fail-share", type=float, default=0.0)
    args = parser.parse_args()
    if not 0 <= args.fail_share <= 1 or math.isnan(args.fail_share):
        parser.error("--fail-share must lie in [0, 1]")
    uvicorn.run(make_app(RULES[args.rule], args.rule, args.fail_share), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
