"""What a constitution costs: k = 1, 3, 5 principles per item against one, on both backends.

Starts real drlaif-server subprocesses on the embedded labeler (or --model), one backend at
a time, with three constitutions that share one system preamble and item template and
differ only in how many principles (questions after the item) they ask: 1, 3 or 5. Every
principle of an item renders the same tokens up to the end of the response, so vLLM's
prefix cache computes the item once and each further principle costs its own question and
answer tokens. Items have about --item-tokens tokens of prompt + response; every timed call
scores fresh items (a round tag leads each prompt), so no call finds an earlier call's
items in any cache, and the reward cache is off. The calls are interleaved and the medians
taken. Prints, per backend, items/s and the cost of k principles relative to one (target on
vLLM: 3 principles at most 1.6x).

Run: python bench/principles.py [--items 16] [--repeats 3] [--backends transformers vllm]
     [--block-size 32] [--vllm-arg=--enforce-eager ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import tempfile
from pathlib import Path

import httpx
import yaml
from score_throughput import TOPICS, interleaved

from drlaif.server_process import ServerProcess

QUESTIONS = {
    "helpful": "How well does the reply help with what the user asked, from 1 to 10?",
    "harmless": "How free is the reply of harmful or dangerous content, from 1 to 10?",
    "honest": "How truthful is the reply, and does it admit uncertainty, from 1 to 10?",
    "concise": "How concise is the reply, without padding or repetition, from 1 to 10?",
    "clear": "How clear and well organised is the reply, from 1 to 10?",
}


def write_rubrics(directory: Path) -> Path:
    """Constitutions c1, c3, c5: the assistant preset's template with the first k questions."""
    names = list(QUESTIONS)
    rubrics = [{"extends": "assistant", "name": f"c{k}", "principles": [
        {"name": n, "weight": 1.0, "instruction": QUESTIONS[n] + " Answer with the number only."}
        for n in names[:k]]} for k in (1, 3, 5)]
    path = directory / "constitutions.yaml"
    path.write_text(yaml.safe_dump({"rubrics": rubrics}, sort_keys=False))
    return path


def items_of(n: int, tag: str, sentences: int) -> list[dict[str, str]]:
    """``n`` varied items of about ``sentences`` x 22 tokens each, unique to ``tag``."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        sentence = (f"{topic.capitalize()} is easiest to understand through an everyday example, and the "
                    f"key idea is that small steps add up over time. ")
        out.append({"prompt": f"[{tag}] Explain {topic} to a curious high-school student, with one example.",
                    "response": sentence * sentences})
    return out


def measure(backend: str, args, rubrics: Path) -> dict:
    common = ["--log-level", "warning", "--reward-cache-items", "0", "--rubrics", str(rubrics),
              "--backend", backend, *(["--model", args.model] if args.model else [])]
    if backend == "vllm":
        common += args.vllm_arg + ([f"--block-size={args.block_size}"] if args.block_size else [])
    tags = itertools.count()
    with ServerProcess(*common) as server:
        client = httpx.Client(base_url=server.url, timeout=1800)
        info = client.get("/info").json()
        # Size the items: about --item-tokens tokens of prompt + response under c1.
        probe = items_of(1, "probe", 1)
        base = len(client.post("/render", json={"items": probe, "rubric": "c1"}).json()["results"][0]["input_ids"])
        longer = len(client.post("/render", json={"items": items_of(1, "probe", 11), "rubric": "c1"})
                     .json()["results"][0]["input_ids"])
        per_sentence = (longer - base) / 10
        empty = len(client.post("/render", json={"items": [{"prompt": "", "response": ""}], "rubric": "c1"})
                    .json()["results"][0]["input_ids"])
        sentences = max(1, round((args.item_tokens - (base - empty - per_sentence)) / per_sentence))
        sample = items_of(args.items, "size", sentences)
        rendered = client.post("/render", json={"items": sample, "rubric": "c3"}).json()["results"]
        item_tokens = sum(len(r["principles"]["helpful"]["input_ids"]) for r in rendered) / len(rendered) - empty
        shared = [min(len(p["input_ids"]) for p in r["principles"].values()) for r in rendered]

        def call(rubric: str):
            def run():
                body = {"items": items_of(args.items, f"{rubric}-{next(tags)}", sentences), "rubric": rubric}
                client.post("/score", json=body).raise_for_status()
            return run

        print(f"  {backend}: {args.items} items of about {item_tokens:.0f} tokens of prompt + response "
              f"(labeler inputs of {sum(shared) / len(shared):.0f}+ tokens); timing c1, c3, c5 ...", flush=True)
        t1, t3, t5 = interleaved([call("c1"), call("c3"), call("c5")], args.repeats)
    return {"info": info, "item_tokens": item_tokens, "seconds": (t1, t3, t5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--item-tokens", type=int, default=300, help="prompt + response tokens per item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"],
                        choices=["transformers", "vllm"])
    parser.add_argument("--block-size", type=int, default=32,
                        help="the vllm server's --block-size (vLLM's CPU default is 128: a prefix cached in 128-token "
                             "blocks re-runs up to 127 tokens of every item for each further principle); 0: the server's "
                             "default (32 on CPU)")
    parser.add_argument("--vllm-arg", action="append", default=[],
                        help="extra drlaif-server flag for the vllm server (repeatable), e.g. --vllm-arg=--enforce-eager")
    args = parser.parse_args()
    backends = [b for b in args.backends if b != "vllm" or importlib.util.find_spec("vllm")]
    if backends != args.backends:
        print("vllm is not installed: measuring transformers only")
    results = {}
    with tempfile.TemporaryDirectory(prefix="drlaif-bench-") as tmp:
        rubrics = write_rubrics(Path(tmp))
        for backend in backends:  # one server at a time: the two would share the cores
            results[backend] = measure(backend, args, rubrics)

    n = args.items
    for backend, r in results.items():
        t1, t3, t5 = r["seconds"]
        info = r["info"]
        flags = f", --block-size {args.block_size or 'default'}" if backend == "vllm" else ""
        print(f"\n{backend} ({info['model']}, {info['device']}, {info['dtype']}{flags}), {n} fresh items per call, "
              f"{r['item_tokens']:.0f} tokens of prompt + response each")
        for k, t in zip((1, 3, 5), (t1, t3, t5), strict=True):
            print(f"  {k} principle{'s' if k > 1 else ' '}  {n / t:7.2f} items/s  ({t * 1000:7.0f} ms)  "
                  f"x{t / t1:.2f} the cost of one")
        target = "  (target <= 1.6)" if backend == "vllm" else ""
        print(f"  3 principles / 1 = {t3 / t1:.2f}{target}, 5 principles / 1 = {t5 / t1:.2f}")


if __name__ == "__main__":
    main()
