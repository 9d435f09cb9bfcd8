"""drlaif's PPO against trl's GRPO on the same task, in one run.

Both trainers get the same policy (the embedded SmolLM2-135M-Instruct), the same shipped
prompts (rendered with the same chat template), the same rollouts per step, new-token budget,
step count and seed, and score against the same deterministic reward server
(bench/rule_reward_server.py: a rule on the response text, so that labeler noise is out of
the comparison). Prints each trainer's gain (mean reward of the last K steps minus the first
K), the gain per 100 rollouts, and seconds per step, then PPO's ratio to GRPO on both.

By default PPO runs matched to what GRPO does with its defaults (MATCHED): one optimisation
pass over each batch (trl's num_iterations 1), a fixed KL coefficient of 0.05 in the loss
(GRPO's beta, no budget) and no learning-rate warm-up (trl warms up none), so that the
seconds per step compare the algorithms rather than how much optimisation each does per
batch. --ppo-defaults runs drlaif-train ppo's own defaults instead (two epochs, a KL budget).

Run: python bench/trainer_peers.py [--steps 20] [--rule second_person] [--only ppo] [--ppo-defaults]
     extra trainer flags: --ppo-arg=--learning-rate=2e-5 --grpo-arg=--beta=0.0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from typing import Self

from drlaif.server_process import free_port, wait_until_ready


class RuleServer:
    def __init__(self, rule: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "rule_reward_server.py"), str(self.port),
                                      "--rule", rule])

    def __enter__(self) -> Self:
        wait_until_ready(self.url, self.proc, 60)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def run_trainer(algorithm: str, url: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """One `drlaif-train` process; returns its per-step rewards, step times and wall time."""
    cmd = [sys.executable, "-m", "trainer.cli", algorithm, "--reward-url", url, "--output-dir", str(out),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed),
           "--eval-prompts", "0", "--save-every", "0", *extra]
    print(f"[bench] {' '.join(cmd[2:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"[bench] {algorithm} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in rows]
    step_times = [r["step_seconds"] for r in rows if r.get("step_seconds")]
    return {"rewards": rewards, "step_seconds": statistics.median(step_times) if step_times else wall / args.steps,
            "wall": wall, "lengths": [r.get("response_length_mean", 0.0) for r in rows],
            "kl": [r.get("kl", 0.0) for r in rows]}


# drlaif-train ppo flags that do per batch what drlaif-train grpo (trl's GRPO) does by default.
MATCHED = ["--ppo-epochs", "1", "--target-kl", "0", "--kl-coef", "0.05", "--warmup-steps", "0"]
# What each trainer logs as "kl": drlaif's PPO the sum over a response, trl a mean per token.
KL_UNITS = {"ppo": "nats/response", "grpo": "nats/token"}


def summarise(name: str, run: dict, k: int, rollouts: int) -> dict:
    first, last = statistics.mean(run["rewards"][:k]), statistics.mean(run["rewards"][-k:])
    gain = last - first
    row = {"trainer": name, "first": first, "last": last, "gain": gain, "gain_per_100": 100 * gain / rollouts,
           "step_seconds": run["step_seconds"], "wall": run["wall"]}
    print(f"{name:>5}  reward first {k}: {first:.3f}  last {k}: {last:.3f}  gain {gain:+.3f}  "
          f"gain/100 rollouts {row['gain_per_100']:+.3f}  {run['step_seconds']:.1f} s/step  "
          f"(wall {run['wall']:.0f} s; length {run['lengths'][0]:.0f} -> {run['lengths'][-1]:.0f} tokens; "
          f"kl, last {k} steps {statistics.mean(run['kl'][-k:]):.3f} {KL_UNITS[name]})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="rollouts per step, both trainers")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rule", default="second_person", help="reward rule of bench/rule_reward_server.py")
    parser.add_argument("--window", type=int, default=5, help="steps averaged at the start and at the end")
    parser.add_argument("--only", choices=["ppo", "grpo"], help="run one trainer (for tuning)")
    parser.add_argument("--ppo-arg", action="append", default=[], help="extra drlaif-train ppo flag")
    parser.add_argument("--grpo-arg", action="append", default=[], help="extra drlaif-train grpo flag")
    parser.add_argument("--ppo-defaults", action="store_true",
                        help="PPO with drlaif-train's defaults instead of matched to GRPO's (see MATCHED)")
    args = parser.parse_args()
    ppo_args = ([] if args.ppo_defaults else MATCHED) + args.ppo_arg

    rollouts = args.steps * args.batch_size
    rows = []
    with RuleServer(args.rule) as server, tempfile.TemporaryDirectory(prefix="drlaif-peers-") as tmp:
        print(f"[bench] rule {args.rule!r}; {args.steps} steps x {args.batch_size} rollouts, "
              f"{args.max_new_tokens} new tokens, seed {args.seed}", flush=True)
        for name, extra in (("ppo", ppo_args), ("grpo", args.grpo_arg)):
            if args.only and name != args.only:
                continue
            run = run_trainer(name, server.url, Path(tmp) / name, args, extra)
            rows.append(summarise(name, run, args.window, rollouts))
    if len(rows) == 2:
        ppo, grpo = rows
        ratio = ppo["gain_per_100"] / grpo["gain_per_100"] if grpo["gain_per_100"] > 0 else float("inf")
        print(f"PPO / GRPO: gain per rollout {ratio:.2f}x (target >= 1), "
              f"time per step {ppo['step_seconds'] / grpo['step_seconds']:.2f}x")


if __name__ == "__main__":
    main()
