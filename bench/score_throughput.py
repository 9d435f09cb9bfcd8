"""Throughput of /score against the bare forward pass and against generate-and-parse.

One realistic batch: 32 items of about 300 labeler tokens on the embedded labeler
(or --model). Measures, in one run on the same machine:
  (a) POST /score over HTTP to a real drlaif-server subprocess;
  (b) a bare in-process transformers forward over the same token ids, reading the same
      two positions (the floor any scorer pays);
  (c) the peer approach: greedy generation of up to 8 tokens, then parsing the number;
  (d) 32 concurrent single-item requests versus one 32-item request.
Prints items/s and the ratios a/b, a/c and d. Run: python bench/score_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time

import httpx
import torch

from server.backends import resolve_model
from server.backends.embedded import default_cache_dir
from server.process import ServerProcess

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
    server_args = ["--log-level", "warning", "--device", args.device, "--reward-cache-items", "0"]
    if args.model:
        server_args += ["--model", args.model]

    # The same model in this process, for the bare baselines.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = resolve_model(args.model, default_cache_dir())
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with ServerProcess(*server_args) as server:
        client = httpx.Client(base_url=server.url, timeout=600)
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

        def http_score():
            client.post("/score", json=body).raise_for_status()

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
        a, b, d = interleaved([http_score, bare_forward, concurrent_singles], args.repeats)

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
    print(f"a/b = {b / a:.2f}   (target >= 0.85)")
    print(f"a/c = {c / a:.2f}")
    print(f"d/a = {a / d:.2f}   (concurrent singles vs one batch; target >= 0.7)")


if __name__ == "__main__":
    main()
