"""drlaif's exact /score against vLLM's own OpenAI server doing the common (inexact) recipe.

Starts, on the embedded labeler (or --model), with the same engine flags on both sides, and
each side's own default block size unless --block-size sets both (on CPU drlaif's vllm
backend uses 32, vLLM's server 128):
  - drlaif-server --backend vllm (reward cache off: every round is computed);
  - vLLM's own server, ``python -m vllm.entrypoints.openai.api_server``.
Scores the same HH-RLHF-like items (bench/data/hh_harmless_like.jsonl, or --items-file)
under one rubric (default ``harmless``) three ways, in interleaved rounds after a warm-up:
  (a) drlaif POST /score: the exact expected score over the labels 1..10;
  (b) vLLM /v1/completions with the token ids drlaif's /render gives, max_tokens=1,
      logprobs=20, expected score over the digit tokens in the top 20 (the naive read:
      "10" is two tokens, so its mass is counted as "1");
  (c) the same server, 4 sampled tokens at temperature 1, the first number parsed.
Every round uses fresh items (a round tag at the start of each prompt), so prefix
caching helps both servers only with the rubric's shared prefix, as in real use.
Prints items/s of each, the ratio a/b (target >= 1.0) and the reward error of (b) and
(c) against (a)'s exact answer.

Run: python bench/peers.py [--repeats 3] [--block-size 32] [--items-file FILE] [--no-enforce-eager]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path

import httpx

from drlaif.embedded_model import default_cache_dir, resolve_model
from drlaif.server_process import ServerProcess, VLLMOpenAIServer
from server.rubrics import RubricRegistry

ITEMS_FILE = Path(__file__).parent / "data" / "hh_harmless_like.jsonl"
DIGITS = {str(d): d for d in range(1, 11)}
NUMBER = re.compile(r"\b(10|[1-9])\b")


def load_items(path: Path, n: int | None) -> list[dict[str, str]]:
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return items[:n] if n else items


def tagged(items: list[dict[str, str]], tag: str) -> list[dict[str, str]]:
    """The items with a tag in front of each prompt, so that no round reuses another's KV."""
    return [{"prompt": f"[{tag}] {it['prompt']}", "response": it["response"]} for it in items]


def naive_scores(choices: list[dict]) -> list[float | None]:
    """Expected score over the digit tokens of each choice's top logprobs (None: no digit)."""
    out = []
    for choice in choices:
        top = choice["logprobs"]["top_logprobs"][0]
        mass = {DIGITS[t.strip()]: math.exp(lp) for t, lp in top.items() if t.strip() in DIGITS}
        total = sum(mass.values())
        out.append(sum(d * p for d, p in mass.items()) / total if total > 0 else None)
    return out


def parsed_scores(choices: list[dict]) -> list[float | None]:
    """The first number 1..10 in each choice's sampled text (None: none)."""
    out = []
    for choice in choices:
        match = NUMBER.search(choice["text"])
        out.append(float(match.group(1)) if match else None)
    return out


def errors(exact: list[float], approx: list[float | None], to_reward) -> tuple[float, float, int]:
    """(mean, max) |reward error| over the items approx could answer, and how many it could not."""
    diffs = [abs(to_reward(a) - e) for a, e in zip(approx, exact, strict=True) if a is not None]
    missing = sum(a is None for a in approx)
    return (statistics.fmean(diffs) if diffs else float("nan"), max(diffs, default=float("nan")), missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--items-file", type=Path, default=ITEMS_FILE,
                        help="JSONL of {prompt, response} (default: the shipped HH-RLHF-like items)")
    parser.add_argument("--items", type=int, default=None, help="use only the first N items")
    parser.add_argument("--rubric", default="harmless")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                        help="--enforce-eager on both engines (default: on; start-up on CPU is much faster)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="--block-size on both engines (default: each side's own default)")
    parser.add_argument("--drlaif-arg", action="append", default=[],
                        help="extra drlaif-server flag (repeatable), e.g. --drlaif-arg=--block-size=32")
    args = parser.parse_args()

    base = load_items(args.items_file, args.items)
    n = len(base)
    rubric = RubricRegistry.load().get(args.rubric)
    engine_flags = (["--dtype", "float32"] + (["--enforce-eager"] if args.enforce_eager else [])
                    + ([f"--block-size={args.block_size}"] if args.block_size else []))
    drlaif_flags = ["--backend", "vllm", "--log-level", "warning", "--reward-cache-items", "0",
                    *engine_flags, *args.drlaif_arg] + (["--model", args.model] if args.model else [])
    model_path, _ = resolve_model(args.model, default_cache_dir())

    # One engine at a time while starting: start-up is CPU-heavy.
    with ServerProcess(*drlaif_flags) as drlaif, VLLMOpenAIServer(model_path, engine_flags) as peer:
        ours = httpx.Client(base_url=drlaif.url, timeout=600)
        theirs = httpx.Client(base_url=peer.url, timeout=600)

        def render(items):
            body = {"items": items, "rubric": args.rubric}
            return [r["input_ids"] for r in ours.post("/render", json=body).raise_for_status().json()["results"]]

        def exact(items) -> list[float]:
            body = {"items": items, "rubric": args.rubric}
            return [r["reward"] for r in ours.post("/score", json=body).raise_for_status().json()["results"]]

        def completions(ids, **params) -> list[dict]:
            body = {"model": "labeler", "prompt": ids, **params}
            choices = theirs.post("/v1/completions", json=body).raise_for_status().json()["choices"]
            return sorted(choices, key=lambda c: c["index"])

        def naive(ids):
            return naive_scores(completions(ids, max_tokens=1, logprobs=20, temperature=0))

        def sampled(ids):
            return parsed_scores(completions(ids, max_tokens=4, temperature=1.0))

        methods = {"exact": lambda items, ids: exact(items), "naive": lambda items, ids: naive(ids),
                   "sampled": lambda items, ids: sampled(ids)}
        fresh: dict[str, list[float]] = {k: [] for k in methods}
        repeated: dict[str, list[float]] = {k: [] for k in methods}
        rewards: dict[str, list] = {k: [] for k in methods}
        same = tagged(base, "same items every round")
        same_ids = render(same)
        for r in range(args.repeats + 1):  # round 0 warms both engines up and is not counted
            line = []
            for key, method in methods.items():
                # Fresh items: a tag of this round and method, so no read finds another's KV.
                items = tagged(base, f"round {r} {key}")
                ids = render(items)
                started = time.perf_counter()
                method(items, ids)
                elapsed = time.perf_counter() - started
                # Items the engines have seen before: only the last partial KV block is computed.
                started = time.perf_counter()
                method(same, same_ids)
                again = time.perf_counter() - started
                line.append(f"{key} {n / elapsed:6.2f} / {n / again:6.2f}")
                if r:
                    fresh[key].append(elapsed)
                    repeated[key].append(again)
            print(f"round {r}{' (warm-up)' if not r else ''}: items/s fresh / repeated: " + "   ".join(line),
                  flush=True)
            if r:  # the reward errors, on identical ids for all three (not timed)
                items = tagged(base, f"round {r} exact")
                ids = render(items)
                rewards["exact"] += exact(items)
                rewards["naive"] += naive(ids)
                rewards["sampled"] += sampled(ids)
        info = ours.get("/info").json()

    tokens = statistics.fmean(len(i) for i in same_ids)
    print(f"\nlabeler {info['model']} ({info['dtype']}); rubric {args.rubric}; {n} items of {tokens:.0f} "
          f"labeler tokens on average, one request each way; engine flags on both sides: "
          f"{' '.join(engine_flags)}; block size "
          f"{args.block_size or 'each side its own default (on CPU: drlaif 32, vLLM 128)'}; "
          f"median of {args.repeats} interleaved rounds")
    scale = rubric.scale.to_scale()
    rows = [("(a) drlaif /score (vllm backend, exact)", "exact", (0.0, 0.0, 0)),
            ("(b) vLLM server, top-20 digit read", "naive", errors(rewards["exact"], rewards["naive"], scale.to_reward)),
            ("(c) vLLM server, sample 4 tokens + parse", "sampled",
             errors(rewards["exact"], rewards["sampled"], scale.to_reward))]
    t = {k: statistics.median(v) for k, v in fresh.items()}
    t2 = {k: statistics.median(v) for k, v in repeated.items()}
    print(f"{'':42} {'fresh items/s':>14} {'repeated':>9}  reward error vs exact (mean / max, unparsed)")
    for label, key, (mean, worst, missing) in rows:
        print(f"{label:42} {n / t[key]:14.2f} {n / t2[key]:9.2f}  {mean:.3f} / {worst:.3f}, {missing}")
    print(f"a/b = {t['naive'] / t['exact']:.2f} fresh, {t2['naive'] / t2['exact']:.2f} repeated   "
          "(drlaif exact against vLLM's naive single read; target >= 1.0)")
    print(f"a/c = {t['sampled'] / t['exact']:.2f} fresh, {t2['sampled'] / t2['exact']:.2f} repeated   "
          "(against generate-and-parse)")


if __name__ == "__main__":
    main()
