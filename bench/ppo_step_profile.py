"""Where a PPO step's time goes, for the previous design and for today's defaults, in one run.

Both trainers use the embedded policy, the demo's settings (8 rollouts, 32 new tokens) and an
in-process deterministic reward (bench/rule_reward_server.py's brevity rule, no HTTP), so
the step is the trainer's work alone. Their steps alternate in one process, so a change in the
machine's speed hits both alike. Prints the median seconds per phase (generate, read = policy
and reference log-probs and values, reward_wait, optimise) and the ratio of the step times.

"previous" is the earlier PPO design: a separate value model (a second backbone, run forward and
backward every minibatch), GAE lambda 0.95, value clip 0.2, two epochs, one response per prompt.

Run: python bench/ppo_step_profile.py [--steps 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rule_reward_server import brevity

from drlaif.protocol import ItemScore
from trainer.config import PPOConfig
from trainer.data.prompt_datasets import load_prompt_dataset
from trainer.ppo.trainer import PPOTrainer

PHASES = ("generate", "read", "reward_wait", "optimise")
PREVIOUS = {"value_model": "separate", "lam": 0.95, "clip_range_value": 0.2, "ppo_epochs": 2,
            "samples_per_prompt": 1, "advantage_estimator": "gae"}


class RuleReward:
    """A reward source with RewardClient's interface, computed in this process."""

    def score(self, prompts, responses, rubric=None) -> list[float]:
        return [brevity(r) for r in responses]

    def submit_score_items(self, prompts, responses, rubric=None, references=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result([ItemScore(reward=r, score=r, distribution=[1.0], label_mass=1.0, label_entropy=0.0,
                                     reward_as_written=r, reward_robust=r, judge_spans=0, input_tokens=0,
                                     truncated=False, cached=False)
                           for r in self.score(prompts, responses)])
        return future

    def close(self) -> None:
        pass


def make_trainer(overrides: dict, steps: int, out: str) -> PPOTrainer:
    train, held = load_prompt_dataset(None, "train", "prompt")
    config = PPOConfig(output_dir=out, batch_size=8, max_new_tokens=32, eval_prompts=0, steps=steps + 1, seed=0,
                       **overrides)
    return PPOTrainer(config, train, held, reward=RuleReward())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per trainer (after one warm-up)")
    args = parser.parse_args()

    runs = {"previous": [], "defaults": []}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {"previous": make_trainer(PREVIOUS, args.steps, f"{tmp}/previous"),
                    "defaults": make_trainer({}, args.steps, f"{tmp}/defaults")}
        for step in range(args.steps + 1):
            for name, trainer in trainers.items():
                torch.manual_seed(1000 + step)
                runs[name].append(trainer.step(step))
        for trainer in trainers.values():
            trainer.close()

    print(f"\nPPO step, embedded policy, 8 rollouts, 32 new tokens, {args.steps} timed steps each "
          "(medians, seconds)")
    print(f"{'':>10}" + "".join(f"{p:>13}" for p in (*PHASES, "step")))
    medians = {}
    for name, rows in runs.items():
        rows = rows[1:]  # the first step warms up allocators and caches
        medians[name] = statistics.median(r["step_seconds"] for r in rows)
        print(f"{name:>10}" + "".join(f"{statistics.median(r[f'{p}_seconds'] for r in rows):13.2f}"
                                      for p in PHASES) + f"{medians[name]:13.2f}")
    print(f"step time previous / defaults = {medians['previous'] / medians['defaults']:.2f}x (target >= 2)")


if __name__ == "__main__":
    main()
