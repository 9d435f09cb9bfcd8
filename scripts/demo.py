"""`make demo`: the whole direct-RLAIF loop on a CPU, offline, in a few minutes.

1. start drlaif-server on the embedded labeler (SmolLM2-135M-Instruct) and wait until ready;
2. score a few examples over HTTP, to show what the reward looks like;
3. run a short PPO run of the embedded policy against it (drlaif-train ppo, default settings but
   for the run's length): 20 updates of 8 rollouts (2 prompts x 4 sampled responses), 24 new
   tokens. Before and after training it samples 2 responses to each of 40 held-out prompts with
   the same random numbers, has the server score them, and prints the gain with its 95% paired
   bootstrap interval beside the policy's KL to its reference (with its interval, against the
   trainer's default KL budget), the gaming indicators (rating-like text, empty answers) and
   responses side by side; runs/demo/report.md and runs/demo/curves.png hold the same;
4. say in plain words whether the run stayed within its KL budget and whether the gain is real;
5. stop the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from drlaif.server_process import ServerProcess

PORT = int(os.environ.get("DRLAIF_DEMO_PORT", "8000"))
OUTPUT_DIR = os.environ.get("DRLAIF_DEMO_OUTPUT", "runs/demo")
STEPS = os.environ.get("DRLAIF_DEMO_STEPS", "20")
EVAL_PROMPTS = os.environ.get("DRLAIF_DEMO_EVAL_PROMPTS", "40")

EXAMPLES = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of France?", "I think it might be Lyon, or maybe Marseille."),
    ("How do I boil an egg?", "Put the egg in boiling water for 7 to 9 minutes, then cool it in cold water."),
    ("How can I hurt my neighbour's dog?", ("I won't help with hurting an animal. If the dog is a problem, "
                                           "talk to your neighbour or contact animal control.")),
]


def show_examples(url: str) -> None:
    body = {"items": [{"prompt": p, "response": r} for p, r in EXAMPLES]}
    print(f"\n$ curl -s {url}/score -H 'content-type: application/json' -d '{json.dumps(body)[:70]}...'")
    results = httpx.post(f"{url}/score", json=body, timeout=300).raise_for_status().json()["results"]
    print(f"{'reward':>7} {'score':>6} {'mass':>5}  prompt -> response")
    for (prompt, reply), r in zip(EXAMPLES, results, strict=True):
        print(f"{r['reward']:+7.3f} {r['score']:6.2f} {r['label_mass']:5.2f}  {prompt[:34]!r} -> {reply[:40]!r}")
    print("(the embedded 135M labeler is tiny and its judgements are weak; use --model for a real one)\n")


def verdict(stats: dict) -> str:
    """The run's KL against its budget and its held-out gain against its interval, in plain words."""
    gain, kl, budget = stats["gain"], stats["kl"], stats["kl_budget"]
    lines = [f"[demo] KL to the reference after training: {kl['mean']:.2f} nats per response "
             f"[{kl['ci_low']:.2f}, {kl['ci_high']:.2f}], budget {budget:g}: "
             + ("within it." if kl["mean"] <= budget else "OVER it.")]
    if gain["ci_low"] > 0:
        lines.append(f"[demo] held-out gain {gain['mean']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]: "
                     "the policy improved by the labeler's judgement, beyond its 95% interval.")
    else:
        lines.append(f"[demo] held-out gain {gain['mean']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]: "
                     "the interval includes zero, so at this KL budget the run did not show an improvement.")
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    print(f"[demo] starting drlaif-server on port {PORT} with the embedded labeler "
          "(the first run converts the model once, ~30 s)", flush=True)
    server = ServerProcess("--log-level", "warning", port=PORT)
    try:
        server.start()
        print(f"[demo] server ready after {time.monotonic() - started:.0f}s (log: {server.log.name})", flush=True)
        show_examples(server.url)
        print(f"[demo] PPO: embedded policy, shipped prompts, {STEPS} updates of 8 rollouts (2 prompts x 4 "
              f"responses), held-out: 2 responses to each of {EVAL_PROMPTS} prompts -> {OUTPUT_DIR}", flush=True)
        cmd = [sys.executable, "-m", "trainer.cli", "ppo", "--reward-url", server.url,
               "--output-dir", OUTPUT_DIR, "--steps", STEPS, "--batch-size", "8", "--eval-prompts", EVAL_PROMPTS,
               "--eval-samples", "2", "--max-new-tokens", "24", "--save-every", "0"]
        result = subprocess.run(cmd)
        if result.returncode != 0:
            sys.exit(f"[demo] the trainer failed with status {result.returncode}")
        print(verdict(json.loads((Path(OUTPUT_DIR) / "summary.json").read_text())["report_stats"]))
        print(f"[demo] report: {OUTPUT_DIR}/report.md, plot: {OUTPUT_DIR}/curves.png, "
              f"metrics: {OUTPUT_DIR}/metrics.jsonl, samples: {OUTPUT_DIR}/rollouts.jsonl")
    finally:
        server.stop()
        print(f"[demo] server stopped; total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
