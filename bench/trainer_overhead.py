"""PPO step time with the remote reward server versus an in-process reward of equal cost.

Both runs use the same seed, prompts and policy, so they sample the same rollouts. The
remote run scores over HTTP with drlaif-server (embedded labeler, transformers backend)
and overlaps the request with the policy/reference/value reads; the in-process run
scores with the very same Scorer inside the trainer process, synchronously. Prints the
median step time of each and their ratio (target: remote / in-process <= 1.15).

Run: python bench/trainer_overhead.py [--steps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import tempfile

from server.config import ServerSettings
from server.app.serving import ScoringService
from server.app.metrics import Metrics
from server.process import ServerProcess
from trainer.config import PPOConfig
from trainer.ppo import PPOTrainer
from trainer.prompts import load_prompt_dataset


class InProcessReward:
    """The server's scoring pipeline, called directly in this process (no HTTP, no overlap)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.service = ScoringService(ServerSettings(), Metrics())
        self.loop.run_until_complete(self.service.start())

    def score(self, prompts, responses, rubric=None) -> list[float]:
        scored = self.loop.run_until_complete(self.service.scorer.score(rubric, list(zip(prompts, responses))))
        return [s.result.reward for s in scored]

    def submit_score(self, prompts, responses, rubric=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(self.score(prompts, responses, rubric))
        return future

    def close(self) -> None:
        self.loop.run_until_complete(self.service.stop())
        self.loop.close()


def run(reward, url: str, steps: int, out: str) -> list[float]:
    train, held = load_prompt_dataset(None, "train", "prompt")
    config = PPOConfig(reward_url=[url], output_dir=out, batch_size=8, minibatch_size=8, ppo_epochs=1,
                       max_new_tokens=32, eval_prompts=0, steps=steps + 1, seed=0)
    trainer = PPOTrainer(config, train, held, reward=reward)
    try:
        times = [trainer.step(step)["step_seconds"] for step in range(steps + 1)]
    finally:
        trainer.close()
    return times[1:]  # the first step warms up allocators and caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    with ServerProcess("--log-level", "warning") as server, tempfile.TemporaryDirectory() as tmp:
        remote = run(None, server.url, args.steps, f"{tmp}/remote")
    with tempfile.TemporaryDirectory() as tmp:
        local = run(InProcessReward(), "http://unused", args.steps, f"{tmp}/local")
    r, l = statistics.median(remote), statistics.median(local)
    print(f"\nPPO step, batch 8, 32 new tokens, embedded policy and labeler, {args.steps} timed steps each")
    print(f"remote reward (HTTP, overlapped):   {r:6.1f} s/step   {[round(t, 1) for t in remote]}")
    print(f"in-process reward (same Scorer):    {l:6.1f} s/step   {[round(t, 1) for t in local]}")
    print(f"ratio remote / in-process = {r / l:.2f}   (target <= 1.15)")


if __name__ == "__main__":
    main()
