"""PPO step time with the remote reward server versus an in-process reward of equal cost.

Both runs use the same seed, prompts and policy, so they sample the same rollouts. The
remote run scores over HTTP with drlaif-server (embedded labeler, transformers backend)
and overlaps the request with the policy/reference/value reads; the in-process run
scores with the very same Scorer inside the trainer process, synchronously. The steps
of the two runs alternate in one process. Prints the median step time of each and their
ratio (target: remote / in-process <= 1.15).

Run: python bench/trainer_overhead.py [--steps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import tempfile

import torch

from drlaif.protocol import ItemScore, ScoreItem, ScoreRequest
from drlaif.server_process import ServerProcess
from server.app.metrics import Metrics
from server.app.serving import ScoringService
from server.config import ServerSettings
from trainer.config import PPOConfig
from trainer.data.prompt_datasets import load_prompt_dataset
from trainer.ppo.trainer import PPOTrainer


class InProcessReward:
    """The server's scoring pipeline, called directly in this process (no HTTP, no overlap)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.service = ScoringService(ServerSettings(), Metrics())
        self.loop.run_until_complete(self.service.start())

    def score_items(self, prompts, responses, rubric=None) -> list[ItemScore]:
        request = ScoreRequest(items=[ScoreItem(prompt=p, response=r) for p, r in zip(prompts, responses)],
                               rubric=rubric)
        return self.loop.run_until_complete(self.service.score(request)).results

    def score(self, prompts, responses, rubric=None) -> list[float]:
        return [s.reward for s in self.score_items(prompts, responses, rubric)]

    def submit_score_items(self, prompts, responses, rubric=None, references=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(self.score_items(prompts, responses, rubric))
        return future

    def close(self) -> None:
        self.loop.run_until_complete(self.service.stop())
        self.loop.close()


def make_trainer(reward, url: str, steps: int, out: str) -> PPOTrainer:
    train, held = load_prompt_dataset(None, "train", "prompt")
    config = PPOConfig(reward_url=[url], output_dir=out, batch_size=8, minibatch_size=8, ppo_epochs=1,
                       max_new_tokens=32, eval_prompts=0, steps=steps + 1, seed=0)
    return PPOTrainer(config, train, held, reward=reward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    remote_times, local_times = [], []
    with ServerProcess("--log-level", "warning") as server, tempfile.TemporaryDirectory() as tmp:
        in_process = InProcessReward()
        remote = make_trainer(None, server.url, args.steps, f"{tmp}/remote")
        local = make_trainer(in_process, "http://unused", args.steps, f"{tmp}/local")
        try:
            # Steps alternate, so a change in the machine's speed hits both runs alike. The
            # same seed before each step makes both sample the same rollouts (their policies
            # stay equal: same rewards, same updates), so they do the same work.
            for step in range(args.steps + 1):
                for trainer, times in ((remote, remote_times), (local, local_times)):
                    torch.manual_seed(1000 + step)
                    times.append(trainer.step(step)["step_seconds"])
        finally:
            remote.close()
            local.close()  # closes in_process, its reward source
    # The first step warms up allocators and caches.
    r, l = statistics.median(remote_times[1:]), statistics.median(local_times[1:])
    print(f"\nPPO step, batch 8, 32 new tokens, embedded policy and labeler, {args.steps} timed steps each")
    print(f"remote reward (HTTP, overlapped):   {r:6.1f} s/step   {[round(t, 1) for t in remote_times[1:]]}")
    print(f"in-process reward (same Scorer):    {l:6.1f} s/step   {[round(t, 1) for t in local_times[1:]]}")
    print(f"ratio remote / in-process = {r / l:.2f}   (target <= 1.15)")


if __name__ == "__main__":
    main()
