"""drlaif's openai backend in front of vLLM's own server, against drlaif's in-process vllm backend.

Starts, on the embedded labeler (or --model), with the same engine flags on both sides:
  - vLLM's own OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``),
    and drlaif-server --backend openai in front of it (reads in --reads mode: token_ids, the
    exact mode auto picks on this vLLM; or prompt);
  - drlaif-server --backend vllm, the engine in-process.
Both drlaif servers run with the reward cache off. Scores the same HH-RLHF-like items
(bench/data/hh_harmless_like.jsonl, or --items-file) under one rubric (default
``harmless``) in interleaved rounds after a warm-up, one /score request of all items each,
fresh items every round (a round tag at the start of each prompt, so that prefix caching
helps only with the rubric's shared prefix). Prints items/s of each, the ratio, and the
largest reward difference between the two on the same items.

Run: python bench/openai_backend.py [--repeats 3] [--reads token_ids] [--items N] [--no-enforce-eager]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx
from peers import ITEMS_FILE, load_items, tagged

from drlaif.embedded_model import default_cache_dir, resolve_model
from drlaif.server_process import ServerProcess, VLLMOpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--items-file", type=Path, default=ITEMS_FILE, help="JSONL of {prompt, response}")
    parser.add_argument("--items", type=int, default=None, help="use only the first N items")
    parser.add_argument("--rubric", default="harmless")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reads", choices=["token_ids", "prompt"], default="token_ids",
                        help="the openai backend's --openai-logprobs (default: token_ids)")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                        help="--enforce-eager on both engines (default: on; start-up on CPU is much faster)")
    args = parser.parse_args()

    base = load_items(args.items_file, args.items)
    n = len(base)
    engine_flags = ["--dtype", "float32"] + (["--enforce-eager"] if args.enforce_eager else [])
    model_path, _ = resolve_model(args.model, default_cache_dir())
    common = ["--log-level", "warning", "--reward-cache-items", "0", "--model", model_path]

    # One engine at a time while starting: start-up is CPU-heavy.
    with VLLMOpenAIServer(model_path, engine_flags) as upstream, \
            ServerProcess("--backend", "openai", "--base-url", f"{upstream.url}/v1", "--openai-logprobs", args.reads,
                          *common) as remote, \
            ServerProcess("--backend", "vllm", *engine_flags, *common) as local:
        servers = {"in-process": httpx.Client(base_url=local.url, timeout=600),
                   "openai": httpx.Client(base_url=remote.url, timeout=600)}

        def score(name: str, items: list[dict]) -> list[float]:
            body = {"items": items, "rubric": args.rubric}
            return [r["reward"] for r in servers[name].post("/score", json=body).raise_for_status().json()["results"]]

        times: dict[str, list[float]] = {name: [] for name in servers}
        worst = 0.0
        for r in range(args.repeats + 1):  # round 0 warms both up and is not counted
            line = []
            # The order alternates, so that neither always runs second.
            for name in (list(servers) if r % 2 else list(servers)[::-1]):
                items = tagged(base, f"round {r} {name}")
                started = time.perf_counter()
                score(name, items)
                elapsed = time.perf_counter() - started
                line.append(f"{name} {n / elapsed:6.2f}")
                if r:
                    times[name].append(elapsed)
            print(f"round {r}{' (warm-up)' if not r else ''}: items/s " + "   ".join(line), flush=True)
            # The same fresh items through both (not timed): the rewards must agree.
            items = tagged(base, f"round {r} both")
            worst = max(worst, max(abs(a - b) for a, b in zip(score("in-process", items), score("openai", items),
                                                               strict=True)))
        info = servers["openai"].get("/info").json()
        tokens = statistics.fmean(len(x["input_ids"]) for x in servers["openai"].post(
            "/render", json={"items": base, "rubric": args.rubric}).raise_for_status().json()["results"])

    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nlabeler {model_path} served by vLLM as {info['model']} (read: {info['read']}); rubric {args.rubric}; "
          f"{n} items of {tokens:.0f} labeler tokens on average, one /score request each round; engine flags on "
          f"both sides: {' '.join(engine_flags)}; median of {args.repeats} interleaved rounds")
    print(f"(a) drlaif --backend vllm (in-process)                  {n / median['in-process']:8.2f} items/s")
    print(f"(b) drlaif --backend openai -> vLLM server ({args.reads:9}) {n / median['openai']:8.2f} items/s")
    print(f"b/a = {median['in-process'] / median['openai']:.2f}; largest |reward b - reward a| on the same items: "
          f"{worst:.2e}")


if __name__ == "__main__":
    main()
