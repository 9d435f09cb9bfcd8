"""A deterministic reward server that speaks drlaif's /score contract, for trainer benchmarks.

A rule on the response text stands in for the labeler, so that learning curves measure the
trainer alone (no labeler noise, no model on the server side). Run:

    python bench/rule_reward_server.py PORT [--rule second_person|brevity]

Rules (rewards in [0.2, 1.0], like a bounded task reward):
  second_person  0.2 + 0.8 * min(1, uses of "you"/"your"/"yours" / 3): addresses the reader.
  brevity        1.0 for at most 8 words, falling linearly to 0.2 at 40 words or more.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

_YOU = re.compile(r"\byou(?:r|rs)?\b", re.IGNORECASE)


def second_person(response: str) -> float:
    return 0.2 + 0.8 * min(1.0, len(_YOU.findall(response)) / 3)


def brevity(response: str) -> float:
    words = len(response.split())
    return 1.0 - 0.8 * min(1.0, max(0, words - 8) / 32)


RULES = {"second_person": second_person, "brevity": brevity}


def make_app(reward: Callable[[str], float], rule: str) -> FastAPI:
    """A /score server whose reward is ``reward(response)`` (also used by the trainer tests)."""
    app = FastAPI()

    @app.get("/health/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.get("/info")
    def info() -> dict:
        return {"limits": {"max_items_per_request": 64}, "rule": rule}

    @app.post("/score")
    def score(body: dict) -> dict:
        results = []
        for item in body["items"]:
            r = reward(item["response"])
            results.append({"reward": r, "score": 5.5 + 4.5 * r, "distribution": [0.1] * 10, "label_mass": 1.0})
        return {"results": results}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--rule", choices=sorted(RULES), default="second_person")
    args = parser.parse_args()
    uvicorn.run(make_app(RULES[args.rule], args.rule), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
