"""What a reasoned judgement costs against a direct read, on both backends.

Starts one real drlaif-server subprocess per backend (transformers, then vllm when
``import vllm`` works), on the embedded labeler (or --model), with the reward cache off
(--reward-cache-items 0: no read and no rationale is reused), one at a time. On the same
HH-RLHF-like items (bench/data/hh_harmless_like.jsonl, or --items-file; the first
--items), each as one /score request, it times in interleaved rounds (median of
--repeats, after a warm-up):
  direct     the general rubric, one exact read;
  budget B   the general rubric with "reasoning": {"max_tokens": B, "stop": [NEVER]} for
             each B of --budgets (default 0 64 256); NEVER (U+2403 twice) is a stop text
             the labeler never writes, so a rationale runs to its budget unless the
             labeler ends its turn (EOS); B = 0 is the instruction without a rationale;
  realistic  the general-reasoned rubric: its default stop ("Rating:"), budget 128.
Every request carries fresh items (a tag of the variant and the call in front of each
prompt), so that vLLM's prefix caching reuses only the rubric's shared prefix, as in
real use, never a whole item scored before. Prints, per backend, the rationale tokens
each item actually got (results' reasoning_tokens), items/s and the time of each variant
against the direct read measured in the same rounds.

Run: python bench/reasoning.py [--items 16] [--budgets 0 64 256] [--repeats 2]
                               [--backends transformers vllm] [--vllm-arg=--max-num-seqs=32 ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from peers import ITEMS_FILE, load_items, tagged
from score_throughput import interleaved

from drlaif.server_process import ServerProcess

# A stop string the labeler's tokenizer encodes exactly (byte-level BPE) but which no
# reply writes: two U+2403 SYMBOL FOR END OF TEXT. The rationale then ends at its budget
# or at the labeler's end of turn, never at a stop.
NEVER = "\u2403\u2403"
REALISTIC_RUBRIC = "general-reasoned"
REALISTIC_BUDGET = 128  # the general-reasoned preset's max_tokens


@dataclass
class Variant:
    """One kind of /score request, and what its timed calls reported."""

    key: str
    rubric: str
    budget: int | None  # None: a direct read
    stop: str  # how the rationale may end, for the table
    reasoning: dict | None = None
    tokens: list[float] = field(default_factory=list)  # mean reasoning_tokens per item, per timed call
    full: list[int] = field(default_factory=list)  # items whose every rationale used the whole budget
    seconds: float = 0.0

    def body(self, items: list[dict]) -> dict:
        body = {"items": items, "rubric": self.rubric}
        if self.reasoning is not None:
            body["reasoning"] = self.reasoning
        return body


def variants(budgets: list[int]) -> list[Variant]:
    out = [Variant("direct", "general", None, "-")]
    for b in budgets:
        out.append(Variant(f"budget {b}", "general", b, "never (EOS or budget)" if b else "-",
                           {"max_tokens": b, "stop": [NEVER]}))
    out.append(Variant("realistic", REALISTIC_RUBRIC, REALISTIC_BUDGET, "default (\"Rating:\")"))
    return out


def vllm_importable() -> tuple[bool, str]:
    """Whether ``import vllm`` works, tried in a subprocess (it is a heavy import)."""
    proc = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]


def post_score(client: httpx.Client, body: dict) -> list[dict]:
    response = client.post("/score", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"/score answered {response.status_code}: {response.text[:2000]}")
    return response.json()["results"]


def measure(backend: str, server_args: list[str], base: list[dict], budgets: list[int], repeats: int,
            ) -> tuple[dict, list[Variant], float]:
    """Start one server, time every variant in interleaved rounds, stop it."""
    started = time.perf_counter()
    print(f"[{backend}] starting the server ...", flush=True)
    with ServerProcess(*server_args) as server:
        print(f"[{backend}] ready after {time.perf_counter() - started:.0f} s", flush=True)
        client = httpx.Client(base_url=server.url, timeout=900)
        info = client.get("/info").raise_for_status().json()
        rendered = client.post("/render", json={"items": base, "rubric": "general"}).raise_for_status().json()
        tokens = statistics.fmean(len(r["input_ids"]) for r in rendered["results"])
        todo = variants(budgets)
        calls = {v.key: 0 for v in todo}

        def timed(v: Variant) -> Callable[[], None]:
            def call() -> None:
                k = calls[v.key]
                calls[v.key] += 1
                round_name = "warm-up" if k == 0 else f"round {k}/{repeats}"
                t0 = time.perf_counter()
                results = post_score(client, v.body(tagged(base, f"{v.key} call {k}")))
                elapsed = time.perf_counter() - t0
                per_item = [r["reasoning_tokens"] for r in results]
                mean = statistics.fmean(per_item)
                if k:  # the warm-up is not counted
                    v.tokens.append(mean)
                    if v.budget:
                        # reads per item: two when the guard read the response again without judge text
                        reads = [2 if r["judge_spans"] else 1 for r in results]
                        v.full.append(sum(t == v.budget * n for t, n in zip(per_item, reads, strict=True)))
                print(f"[{backend}] {round_name:11} {v.key:10} {elapsed:7.1f} s  "
                      f"{mean:6.1f} rationale tokens/item", flush=True)
            return call

        seconds = interleaved([timed(v) for v in todo], repeats)
        for v, s in zip(todo, seconds, strict=True):
            v.seconds = s
    return info, todo, tokens


def report(backend: str, info: dict, rows: list[Variant], n: int, tokens: float, flags: str) -> str:
    direct = rows[0].seconds
    lines = [(f"\n{backend}: labeler {info['model']} on {info['device']} ({info['dtype']}){flags}; {n} items "
             f"of {tokens:.0f} labeler tokens on average (general rubric), one request each")]
    lines.append(f"{'variant':11} {'rubric':17} {'budget':>6}  {'stop':23} {'rationale tok/item':>18} "
                 f"{'at budget':>9} {'items/s':>8} {'ms':>8}  vs direct")
    for v in rows:
        mean = f"{statistics.fmean(v.tokens):.1f}" if v.tokens else "-"
        full = f"{statistics.fmean(v.full):.1f}/{n}" if v.full else "-"
        budget = "-" if v.budget is None else str(v.budget)
        ratio = ("x1.0 (baseline)" if v.budget is None
                 else f"x{v.seconds / direct:.1f} the time of a direct read")
        lines.append(f"{v.key:11} {v.rubric:17} {budget:>6}  {v.stop:23} {mean:>18} {full:>9} "
                     f"{n / v.seconds:8.2f} {v.seconds * 1000:8.0f}  {ratio}")
    return "\n".join(lines)


def summary(backend: str, rows: list[Variant], n: int) -> str:
    direct = rows[0].seconds
    parts = [f"{v.budget} tokens x{v.seconds / direct:.1f}" for v in rows[1:-1]]
    real = rows[-1]
    line = (f"{backend}: reasoned / direct time: " + ", ".join(parts) +
            f"; {REALISTIC_RUBRIC} (stops at \"Rating:\", {statistics.fmean(real.tokens):.0f} tokens/item) "
            f"x{real.seconds / direct:.1f}")
    longest = max(rows[1:-1], key=lambda v: v.budget or 0)
    extra = longest.seconds - direct
    generated = statistics.fmean(longest.tokens) * n
    if longest.budget and extra > 0 and generated:
        line += (f"; budget {longest.budget}: {generated / extra:.0f} rationale tokens/s over the batch "
                 "(its time over direct)")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--items-file", type=Path, default=ITEMS_FILE,
                        help="JSONL of {prompt, response} (default: the shipped HH-RLHF-like items)")
    parser.add_argument("--items", type=int, default=16,
                        help="items per request (the first N of the file)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 64, 256],
                        help="rationale budgets in tokens (general rubric, a stop that never matches)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up (median)")
    parser.add_argument("--backends", nargs="+", choices=["transformers", "vllm"],
                        default=["transformers", "vllm"], help="vllm is skipped when `import vllm` fails")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                        help="--enforce-eager on the vllm server (default: on; on CPU it starts much "
                             "faster)")
    parser.add_argument("--vllm-arg", action="append", default=[],
                        help="extra drlaif-server flag for the vllm server (repeatable), "
                             "e.g. --vllm-arg=--max-num-seqs=32")
    args = parser.parse_args()

    base = load_items(args.items_file, args.items)
    if len(base) < args.items:
        parser.error(f"{args.items_file} holds {len(base)} items, fewer than --items {args.items}")
    n = len(base)
    # The reward cache off: every round computes every read and every rationale.
    common = ["--log-level", "warning", "--reward-cache-items", "0"]
    common += ["--model", args.model] if args.model else []
    vllm_flags = (["--enforce-eager"] if args.enforce_eager else []) + args.vllm_arg
    outputs, summaries = [], []
    for backend in args.backends:
        flags = ""
        server_args = common
        if backend == "vllm":
            ok, why = vllm_importable()
            if not ok:
                print(f"[vllm] skipped: `import vllm` fails: {why}", flush=True)
                summaries.append(f"vllm: skipped (`import vllm` fails: {why})")
                continue
            server_args = [*common, "--backend", "vllm", *vllm_flags]
            flags = f"; flags {' '.join(vllm_flags) or '(defaults)'}"
        try:
            info, rows, tokens = measure(backend, server_args, base, args.budgets, args.repeats)
        except Exception as exc:  # noqa: BLE001 - one backend failing should not hide the other's figures
            print(f"[{backend}] FAILED: {exc}", flush=True)
            summaries.append(f"{backend}: failed: {str(exc).splitlines()[0]}")
            continue
        outputs.append(report(backend, info, rows, n, tokens, flags))
        summaries.append(summary(backend, rows, n))

    print(f"\nmedian of {args.repeats} interleaved rounds after a warm-up; reward cache off; fresh items "
          f"each call; 'at budget': items whose rationale ran to the budget (mean per round)")
    for text in outputs:
        print(text)
    print()
    for line in summaries:
        print(line)


if __name__ == "__main__":
    main()
