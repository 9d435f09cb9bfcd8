"""Throughput of /score against the bare forward pass and against generate-and-parse.

One realistic batch: 32 items of about 300 labeler tokens on the embedded labeler
(or --model). Measures, in one run on the same machine:
  (a) POST /score over HTTP to a real drlaif-server subprocess;
  (b) a bare in-process transformers forward over the same token ids, reading the same
      two positions (what a scorer pays that recomputes every token);
  (c) the peer approach: greedy generation of up to 8 tokens, then parsing the number;
  (d) 32 concurrent single-item requests versus one 32-item request;
  (e) /score with shared-prefix reuse off (--no-prefix-caching), on these items and on
      32 short items (one-line answers, where the rubric is most of the input);
  (f) a GRPO-like workload: 8 prompts x 4 completions per step, some completions
      identical, scored with the reward cache on and off; the hit rate.
Prints items/s and the ratios. Run: python bench/score_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import time

import httpx
import torch

from drlaif.embedded_model import default_cache_dir, resolve_model
from drlaif.server_process import ServerProcess
from server.backends.base import common_prefix_length

TOPICS = ["photosynthesis", "the French revolution", "compound interest", "TCP congestion control",
          "sourdough baking", "black holes", "the immune system", "marathon training"]


def make_items(n: int) -> list[dict[str, str]]:
    """Varied items whose labeler input is about 300 tokens under the general rubric."""
    items = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"Explain {topic} to a curious high-school student, with one concrete example. (#{i})"
        sentence = (f"{topic.capitalize()} is easiest to understand through an everyday example, "
                    f"and the key idea is that small steps add up over time. ")
        items.append({"prompt": prompt, "response": sentence * (3 + i % 3)})
    return items


SHORT = [("What is 7 times 8?", "56."), ("Name a primary colour.", "Red."),
         ("What is the capital of Japan?", "Tokyo."), ("Translate 'merci' to English.", "Thank you."),
         ("Is the sun a star?", "Yes."), ("What is H2O?", "Water."),
         ("How many legs does a spider have?", "Eight."), ("Spell 'cat' backwards.", "tac.")]


def short_items(n: int) -> list[dict[str, str]]:
    """Items with one-line answers: the rubric is most of their labeler input."""
    return [{"prompt": f"{p} (#{i})", "response": r} for i, (p, r) in
            ((i, SHORT[i % len(SHORT)]) for i in range(n))]


def grpo_steps(steps: int, prompts: int = 8, group: int = 4) -> list[list[dict[str, str]]]:
    """Per step, ``group`` completions for each of ``prompts`` prompts, drawn from three
    candidate answers per prompt, so a group repeats some (as sampled groups do on short
    answers); every step has new prompts."""
    rng = random.Random(0)
    out = []
    for step in range(steps):
        items = []
        for i in range(prompts):
            p, r = SHORT[i % len(SHORT)]
            answers = [r, f"{r} I hope that helps.", f"I think the answer is {r.lower()}"]
            items += [{"prompt": f"{p} (step {step}, #{i})", "response": rng.choice(answers)} for _ in range(group)]
        out.append(items)
    return out


def interleaved(fns, repeats: int, warmup: bool = True) -> list[float]:
    """Median seconds of each function, timed round-robin after one warm-up call each."""
    if warmup:
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return [statistics.median(s) for s in samples]


def left_pad(seqs: list[list[int]], pad_id: int):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    items = make_items(args.items)
    body = {"items": items}
    # The reward cache off: the rounds repeat the same items, and this measures computing them.
    cache_at_default = ["--log-level", "warning", "--device", args.device] + (["--model", args.model] if args.model else [])
    server_args = [*cache_at_default, "--reward-cache-items", "0"]

    # The same model in this process, for the bare baselines.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = resolve_model(args.model, default_cache_dir())
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with ServerProcess(*server_args) as server, ServerProcess(*server_args, "--no-prefix-caching") as noreuse, \
            ServerProcess(*cache_at_default) as cached:
        client = httpx.Client(base_url=server.url, timeout=600)
        noreuse_client = httpx.Client(base_url=noreuse.url, timeout=600)
        cached_client = httpx.Client(base_url=cached.url, timeout=600)
        info = client.get("/info").json()
        rendered = client.post("/render", json=body).json()["results"]
        one, zero = rendered[0]["label_token_ids"]["10"][0], rendered[0]["label_token_ids"]["10"][-1]
        first_tokens = [ids[0] for ids in rendered[0]["label_token_ids"].values()]
        # The server's input: prefix + "1", read after the prefix and after the "1".
        ids, mask = left_pad([r["input_ids"] + [one] for r in rendered], pad)
        ids, mask = ids.to(args.device), mask.to(args.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        tokens = sum(len(r["input_ids"]) for r in rendered) / len(rendered)

        @torch.inference_mode()
        def bare_forward():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=2).logits
            logp = torch.log_softmax(logits.float(), -1)
            return logp[:, 0, first_tokens].cpu(), logp[:, 1, zero].cpu()

        def score(c: httpx.Client, payload: dict):
            return lambda: c.post("/score", json=payload).raise_for_status()

        async def singles():
            async with httpx.AsyncClient(base_url=server.url, timeout=600,
                                         limits=httpx.Limits(max_connections=64)) as aclient:
                responses = await asyncio.gather(*(aclient.post("/score", json={"items": [item]})
                                                   for item in items))
            for r in responses:
                r.raise_for_status()

        def concurrent_singles():
            asyncio.run(singles())

        # Interleaved rounds, so drift in machine speed hits every variant alike.
        a, b, d, e = interleaved([score(client, body), bare_forward, concurrent_singles, score(noreuse_client, body)],
                                 args.repeats)
        short = {"items": short_items(args.items)}
        short_rendered = client.post("/render", json=short).json()["results"]
        short_tokens = sum(len(r["input_ids"]) for r in short_rendered) / len(short_rendered)
        shared = common_prefix_length([r["input_ids"] for r in short_rendered])
        s_on, s_off = interleaved([score(client, short), score(noreuse_client, short)], args.repeats)

        # GRPO-like steps, each scored by the server with the reward cache and by one without.
        steps = grpo_steps(1 + args.repeats)
        flags: list[bool] = []
        g_on, g_off = [], []
        for k, step in enumerate(steps):
            started = time.perf_counter()
            results = cached_client.post("/score", json={"items": step}).raise_for_status().json()["results"]
            mid = time.perf_counter()
            client.post("/score", json={"items": step}).raise_for_status()
            if k:  # the first step warms up
                g_on.append(mid - started)
                g_off.append(time.perf_counter() - mid)
                flags += [r["cached"] for r in results]
        hits = sum(flags)
        g_on_s, g_off_s = statistics.median(g_on), statistics.median(g_off)
        grpo_n = len(steps[0])

    prompts, pmask = left_pad([r["input_ids"] for r in rendered], pad)
    prompts, pmask = prompts.to(args.device), pmask.to(args.device)

    @torch.inference_mode()
    def generate_and_parse():
        out = model.generate(input_ids=prompts, attention_mask=pmask, max_new_tokens=8, do_sample=False,
                             pad_token_id=pad)
        texts = tokenizer.batch_decode(out[:, prompts.shape[1]:], skip_special_tokens=True)
        return [int(m.group()) if (m := re.search(r"\d+", t)) else None for t in texts]

    parsed = generate_and_parse()  # also the warm-up
    (c,) = interleaved([generate_and_parse], max(1, args.repeats // 2), warmup=False)

    n = args.items
    print(f"\nlabeler {info['model']} on {info['device']} ({info['dtype']}); {n} items, "
          f"{tokens:.0f} labeler tokens each on average; torch threads {torch.get_num_threads()}")
    print(f"(a) /score over HTTP, one {n}-item request  {n / a:8.1f} items/s  ({a * 1000:.0f} ms)")
    print(f"(b) bare forward, same ids and positions    {n / b:8.1f} items/s  ({b * 1000:.0f} ms)")
    print(f"(c) greedy generate 8 tokens + parse        {n / c:8.1f} items/s  ({c * 1000:.0f} ms;"
          f" {sum(p is None or not 1 <= p <= 10 for p in parsed)}/{n} answers unparseable or off-scale)")
    print(f"(d) {n} concurrent single-item requests      {n / d:8.1f} items/s  ({d * 1000:.0f} ms)")
    print(f"(e) /score, shared-prefix reuse off         {n / e:8.1f} items/s  ({e * 1000:.0f} ms)")
    print(f"a/b = {b / a:.2f}   (target >= 0.85)")
    print(f"a/c = {c / a:.2f}")
    print(f"d/a = {a / d:.2f}   (concurrent singles vs one batch; target >= 0.7)")
    print(f"a/e = {e / a:.2f}   (shared-prefix reuse on/off)")
    print(f"\nshort items: {n} one-line answers, {short_tokens:.0f} labeler tokens each on average, "
          f"{shared} of them the rubric's shared prefix")
    print(f"    /score, shared-prefix reuse on          {n / s_on:8.1f} items/s  ({s_on * 1000:.0f} ms)")
    print(f"    /score, shared-prefix reuse off         {n / s_off:8.1f} items/s  ({s_off * 1000:.0f} ms)")
    print(f"on/off = {s_off / s_on:.2f}   (target >= 1.5)")
    print(f"\nGRPO-like steps: {grpo_n} items each (8 prompts x 4 completions, some repeated), "
          f"{len(g_on)} steps after a warm-up")
    print(f"    reward cache on                         {grpo_n / g_on_s:8.1f} items/s  ({g_on_s * 1000:.0f} ms)")
    print(f"    reward cache off                        {grpo_n / g_off_s:8.1f} items/s  ({g_off_s * 1000:.0f} ms)")
    print(f"cache hit rate {hits / len(flags):.0%} ({hits} of {len(flags)} items 'cached'); on/off = "
          f"{g_off_s / g_on_s:.2f}")


if __name__ == "__main__":
    main()
