"""PPO with the reward from a drlaif server (direct RLAIF).

One step, as in Ziegler et al. 2019 / Lee et al. 2023:
  1. rollout:   sample ``samples_per_prompt`` responses to each prompt of a batch;
  2. reward:    the server scores (prompt, response) -> r in [-1, 1] (asynchronously,
                while the policy and the reference read the rollouts);
  3. shaping:   per-token reward -kl_coef * (log pi - log pi_ref), plus the score at the last
                token; with the group estimator the score is first centred on the mean score
                of the other responses to the same prompt (leave-one-out);
  4. advantage: GAE from the critic's values (gae), or the KL-shaped return to go (group);
  5. optimise:  several epochs of clipped policy and value losses over minibatches.

When nothing before step 5 needs the policy's own reads (the group estimator, the KL in the
loss) and its first epoch is one minibatch over the whole batch, that epoch's forward pass
is the policy that sampled (no dropout: train mode reads as eval mode does). Its log-probs,
values and entropy, detached, are then the rollout's old ones, and the separate read of the
policy in step 2 is skipped: the step runs one policy forward fewer, with the same numbers.

Around the steps, evaluations on held-out prompts (before, every ``eval_every`` steps, after)
score the same sampled responses with the proxy (the optimised judge) and with each monitor
judge, log the KL to the reference, and check the over-optimisation alarm
(trainer/analysis/heldout_eval.py, shared with GRPO and RLOO).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from drlaif.client import RewardClient, RewardClientConfig, RewardServerError, principle_means, rewards_of
from drlaif.protocol import ItemAnswer
from drlaif.reward_failures import check_dropped, score_items_or_drop
from trainer.analysis.heldout_eval import HeldOutEval
from trainer.analysis.judge_signals import (
    consecutive_groups,
    judge_text_metrics,
    label_metrics,
    length_controlled,
    length_reward_corr,
)
from trainer.analysis.metrics_log import MetricsLog
from trainer.analysis.run_report import write_run_files
from trainer.config import PPOConfig
from trainer.data.prompt_datasets import Prompt, References, needs_references, reference_list
from trainer.ppo.distributed import check_world, cpu_world_needed
from trainer.ppo.models import (
    PolicyAndValue,
    ValueModel,
    load_policy,
    load_tokenizer,
    resolve_policy,
)
from trainer.ppo.sampling import Rollout, Sampler, reference_logits
from trainer.ppo.tensor_math import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    k3_kl,
    kl_shaped_rewards,
    leave_one_out_centred,
    masked_mean,
    masked_whiten,
    token_entropy,
    token_logprobs,
)

log = logging.getLogger(__name__)


class RewardSource(Protocol):
    """What PPO needs of a reward: RewardClient's blocking and background scoring."""

    def submit_score_items(self, prompts: list[Prompt], responses: list[str], rubric: str | None = None,
                           references: list[str | None] | None = None,
                           ) -> concurrent.futures.Future[list[ItemAnswer]]: ...

    def score(self, prompts: list[Prompt], responses: list[str], rubric: str | None = None) -> list[float]: ...

    def close(self) -> None: ...


class RewardUnavailable(RuntimeError):
    """The reward server stayed unreachable past the deadline, or too many samples were dropped;
    a checkpoint was saved."""


@dataclass
class ScoredBatch:
    """The reward server's answers for one rollout batch."""

    items: list[ItemAnswer | None]   # None: dropped for want of a reward (--on-reward-failure drop)
    kept: torch.Tensor              # (B,) bool: the sample has a reward
    rewards: list[float | None]     # the reward field the run optimises, per sample
    dropped: int                    # samples dropped across all processes


class PhaseClock:
    """Wall time per phase of a step (generate, read, reward_wait, optimise), for the profile."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _reward_alignment(advantages: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor) -> float:
    """Correlation over rollouts between the mean advantage of a response's tokens and its
    score: near 1 when the update follows the reward, near 0 when the critic's noise drowns it."""
    per_row = masked_mean(advantages, mask, dim=-1)
    if per_row.numel() < 2 or per_row.std() < 1e-8 or scores.std() < 1e-8:
        return 0.0
    return torch.corrcoef(torch.stack([per_row.float(), scores.float()]))[0, 1].item()


def _lr_lambda(schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0
    return factor


class PPOTrainer:
    """Owns the models, the optimizer and the loop; see the module docstring for a step."""

    def __init__(self, config: PPOConfig, train_prompts: list[Prompt], eval_prompts: list[Prompt],
                 reward: RewardSource | None = None, references: References | None = None):
        """``reward`` defaults to a RewardClient for ``config.reward_url``; benchmarks pass others.
        ``references``: the prompts' reference answers, sent to a rubric that judges against one
        (MissingReferences when such a rubric meets a prompt without one)."""
        self.config = c = config
        self.accelerator = Accelerator(mixed_precision=c.mixed_precision, cpu=cpu_world_needed(),
                                       gradient_accumulation_steps=c.gradient_accumulation_steps)
        check_world(self.accelerator.num_processes)
        set_seed(c.seed)
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        self.output_dir = Path(c.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)

        path = resolve_policy(c.model)
        self.tokenizer = load_tokenizer(path)
        policy = load_policy(path)
        if c.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            policy = get_peft_model(policy, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha,
                                                       target_modules="all-linear", task_type="CAUSAL_LM"))
            self.reference = None  # the base model with adapters disabled
        else:
            self.reference = load_policy(path).eval().requires_grad_(False)
        model = PolicyAndValue(policy, ValueModel(path) if c.value_model == "separate" else None)
        # The critic's head starts at zero and must catch up within a few steps, so it learns at
        # its own rate; fused: one kernel over all parameters (the per-tensor loop is slow on CPU).
        head = model.value_head if model.value_head is not None else model.value.head
        head_ids = {id(p) for p in head.parameters()}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        optimizer = torch.optim.AdamW([{"params": body, "lr": c.learning_rate},
                                       {"params": list(head.parameters()), "lr": c.value_learning_rate}],
                                      fused=True)
        updates_per_step = c.ppo_epochs * math.ceil(c.batch_size / c.minibatch_size) // c.gradient_accumulation_steps
        scheduler = LambdaLR(optimizer, _lr_lambda(c.lr_schedule, c.warmup_steps,
                                                   max(1, c.steps * max(1, updates_per_step))))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        if self.reference is not None:
            self.reference = self.reference.to(self.accelerator.device)
        self.kl = KLController(c.kl_coef, c.target_kl, c.kl_horizon)
        self.step_done = 0

        self.sampler = Sampler.for_policy(policy, self.tokenizer, c.temperature, c.max_new_tokens)
        # See the module docstring: the first epoch's forward doubles as the rollout's policy read.
        self.fused_read = (c.advantage_estimator == "group" and c.kl_penalty == "loss"
                           and c.minibatch_size >= c.batch_size and not _has_dropout(policy))
        self.reward = reward or RewardClient(RewardClientConfig(
            urls=list(c.reward_url), rubric=c.rubric, read_timeout_s=c.reward_timeout_s,
            deadline_s=c.reward_deadline_s, reward_field=c.reward_field, reward_mode=c.reward_mode,
            group_opponents=c.group_opponents))
        self.references = references or {}
        self.send_references = needs_references(getattr(self.reward, "takes_reference", lambda _: False), c.rubric,
                                                train_prompts, self.references, c.reference_field)
        self.metrics = MetricsLog(self.output_dir, tensorboard=c.tensorboard,
                                  enabled=self.accelerator.is_main_process)
        self.heldout = HeldOutEval(c, eval_prompts, self.metrics, self.references) if c.eval_prompts else None

    # ----------------------------------------------------------------- data
    def batch_prompts(self, step: int) -> list[Prompt]:
        """The prompts of one step: a seeded shuffle per epoch, sharded across processes, each
        prompt repeated ``samples_per_prompt`` times in a row (one group per prompt)."""
        k = self.config.samples_per_prompt
        n, b = len(self.train_prompts), self.config.batch_size // k
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        start = (step * world + rank) * b
        out = []
        for j in range(start, start + b):
            epoch, i = divmod(j, n)
            order = random.Random(self.config.seed * 100_003 + epoch).sample(range(n), n)
            out += [self.train_prompts[order[i]]] * k
        return out

    # ----------------------------------------------------------------- 1. rollout
    def rollout(self, prompts: list[Prompt]) -> Rollout:
        """Sample a response to each prompt in eval mode; the policy stays in it until the updates."""
        return self.sampler.sample(self.accelerator.unwrap_model(self.model).policy, prompts, self.accelerator.device)

    # ----------------------------------------------------------------- model reads
    @torch.no_grad()
    def read_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Old log-probs, reference log-probs, values and entropy of the sampled tokens; with the
        fused read, the reference's only (the first epoch of :meth:`optimise` adds the rest)."""
        c, model = self.config, self.accelerator.unwrap_model(self.model)
        # With dropout on, these would be one noisy draw rather than the policy that sampled.
        model.eval()
        ids, att, last = rollout.input_ids, rollout.attention_mask, rollout.response_len
        with self.accelerator.autocast():
            if self.fused_read:
                return {"ref_logprobs": token_logprobs(reference_logits(model.policy, self.reference, rollout),
                                                       rollout.response_ids, c.temperature)}
            logits, values = model(ids, att, last)
            logprobs = token_logprobs(logits, rollout.response_ids, c.temperature)
            entropy = token_entropy(logits, c.temperature)
            del logits
            ref_logprobs = token_logprobs(reference_logits(model.policy, self.reference, rollout),
                                          rollout.response_ids, c.temperature)
        return {"logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values, "entropy": entropy}

    # ----------------------------------------------------------------- one PPO step
    def step(self, step: int) -> dict[str, float]:
        """One PPO update, its stages named as in the module docstring; returns the step's metrics."""
        c = self.config
        clock = PhaseClock()
        # 1. rollout
        rollout = self.rollout(self.batch_prompts(step))
        clock.lap("generate")
        # 2. reward: requested now, awaited after the policy's and the reference's reads (overlap).
        references = reference_list(rollout.prompts, self.references, self.send_references)
        pending = self.reward.submit_score_items(rollout.prompts, rollout.responses, c.rubric, references)
        reads = self.read_rollout(rollout)
        clock.lap("read")
        scored = self.collect_rewards(rollout, pending, references)
        clock.lap("reward_wait")
        self.metrics.write_samples(step + 1, rollout.prompts, rollout.responses, scored.rewards)
        # 3. shaping and 4. advantages
        shaped = self.shape_scores(rollout, scored)
        mask = rollout.mask * scored.kept.unsqueeze(-1)
        baseline = torch.zeros_like(reads["ref_logprobs"]) if c.advantage_estimator == "group" else reads["values"]
        in_reward = self.kl.value if c.kl_penalty == "reward" else 0.0
        # (With the fused read the policy's log-probs come in step 5; the KL term is not in the reward then.)
        rewards, _ = kl_shaped_rewards(shaped, reads.get("logprobs", reads["ref_logprobs"]), reads["ref_logprobs"],
                                       mask, in_reward)
        advantages, returns = generalized_advantages(rewards, baseline, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        # 5. optimise
        losses = self.optimise(rollout, reads, advantages, returns, mask)
        clock.lap("optimise")
        kl = (reads["logprobs"] - reads["ref_logprobs"]) * mask
        # The KL controller follows the KL the batch was sampled at.
        all_kept = self.accelerator.gather(scored.kept)
        kl_per_sequence = self.accelerator.gather(kl.sum(-1))[all_kept].mean().item()
        self.kl.update(kl_per_sequence, c.batch_size * self.accelerator.num_processes)
        # 6. metrics
        return {"step": step + 1, **self.reward_metrics(rollout, scored, all_kept),
                "kl": kl_per_sequence, "kl_coef": self.kl.value,
                "entropy": self._mean(masked_mean(reads["entropy"], rollout.mask, dim=-1)),
                **losses,
                "advantage_reward_corr": _reward_alignment(advantages[scored.kept], mask[scored.kept],
                                                           shaped[scored.kept]),
                "response_length_mean": self._mean(rollout.mask.sum(-1)),
                "eos_rate": self._mean(rollout.ended.float()),
                "learning_rate": self.scheduler.get_last_lr()[0],
                "reward_retries": getattr(self.reward, "retries", 0),  # cumulative, over the whole run
                "reward_seconds": clock.seconds["read"] + clock.seconds["reward_wait"],
                **{f"{name}_seconds": t for name, t in clock.seconds.items()},
                "step_seconds": clock.total()}

    def collect_rewards(self, rollout: Rollout, pending: concurrent.futures.Future,
                        references: list[str | None] | None = None) -> ScoredBatch:
        """The server's answers for a rollout. RewardServerError after the client's retries; with
        --on-reward-failure drop, a sample still without reward is left out of this update instead."""
        c = self.config
        if c.on_reward_failure == "drop":
            scored = score_items_or_drop(self.reward, rollout.prompts, rollout.responses, c.rubric, pending,
                                         references)
        else:
            scored = pending.result()
        kept = torch.tensor([s is not None for s in scored], device=self.accelerator.device)
        dropped = int(self.accelerator.gather((~kept).sum().reshape(1)).sum().item())
        check_dropped(dropped, len(scored) * self.accelerator.num_processes, c.max_dropped_fraction)
        kept_rewards = iter(rewards_of([s for s in scored if s is not None], c.reward_field))
        rewards = [next(kept_rewards) if s is not None else None for s in scored]
        return ScoredBatch(scored, kept, rewards, dropped)

    def shape_scores(self, rollout: Rollout, scored: ScoredBatch) -> torch.Tensor:
        """Each response's score as the policy is to see it: length control, the missing-EOS
        penalty, and (group estimator) centred on its siblings' mean, leave-one-out."""
        c = self.config
        # A dropped row's 0 is never used: its mask is zeroed, so no loss, baseline or
        # whitening statistic reads it.
        shaped = torch.tensor([r if r is not None else 0.0 for r in scored.rewards], dtype=torch.float32,
                              device=self.accelerator.device)
        if c.length_control and scored.kept.any():
            rows = scored.kept.nonzero().squeeze(-1).tolist()
            lengths = rollout.mask.sum(-1)
            groups = consecutive_groups(len(scored.items), c.samples_per_prompt)
            controlled = length_controlled([scored.rewards[i] for i in rows], [lengths[i].item() for i in rows],
                                           [groups[i] for i in rows])
            shaped[rows] = torch.tensor(controlled, dtype=shaped.dtype, device=shaped.device)
        if c.missing_eos_penalty is not None:
            shaped[~rollout.ended] -= c.missing_eos_penalty
        if c.advantage_estimator == "group":
            shaped = leave_one_out_centred(shaped, c.samples_per_prompt, scored.kept)
        return shaped

    def optimise(self, rollout: Rollout, reads: dict[str, torch.Tensor], advantages: torch.Tensor,
                 returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Epochs x minibatches of the clipped policy and value losses (plus the KL term with
        --kl-penalty loss); returns the mean of each loss statistic."""
        c = self.config
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [],
                                         "value_clipfrac": [], "approx_kl": []}
        self.model.train()  # the rollout and its reads ran in eval mode
        for epoch in range(c.ppo_epochs):
            order = torch.randperm(c.batch_size, device=mask.device)
            for start in range(0, c.batch_size, c.minibatch_size):
                rows = order[start:start + c.minibatch_size]
                with self.accelerator.accumulate(self.model), self.accelerator.autocast():
                    logits, new_values = self.model(rollout.input_ids[rows], rollout.attention_mask[rows],
                                                    rollout.response_len)
                    new_logprobs = token_logprobs(logits, rollout.response_ids[rows], c.temperature)
                    if self.fused_read and epoch == 0:  # the policy that sampled: the rollout's old reads
                        back = torch.argsort(rows)
                        with torch.no_grad():
                            reads["entropy"] = token_entropy(logits, c.temperature)[back]
                        reads["logprobs"], reads["values"] = new_logprobs.detach()[back], new_values.detach()[back]
                    del logits
                    pg = clipped_policy_loss(new_logprobs, reads["logprobs"][rows], advantages[rows], mask[rows],
                                             c.clip_range)
                    vf = clipped_value_loss(new_values, reads["values"][rows], returns[rows], mask[rows],
                                            c.clip_range_value)
                    loss = pg.loss + c.vf_coef * vf.loss
                    if c.kl_penalty == "loss":
                        loss = loss + self.kl.value * masked_mean(
                            k3_kl(new_logprobs, reads["ref_logprobs"][rows]), mask[rows])
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                for name, value in (("policy_loss", pg.loss), ("value_loss", vf.loss), ("clipfrac", pg.clipfrac),
                                    ("value_clipfrac", vf.clipfrac), ("approx_kl", pg.approx_kl)):
                    stats[name].append(value.item())
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def reward_metrics(self, rollout: Rollout, scored: ScoredBatch, all_kept: torch.Tensor) -> dict[str, float]:
        """The step's reward statistics over every process's kept samples, and the judge's signals."""
        c = self.config
        kept_items = [s for s in scored.items if s is not None]
        scores = torch.tensor([r if r is not None else 0.0 for r in scored.rewards], dtype=torch.float32,
                              device=self.accelerator.device)
        all_rewards = self.accelerator.gather(scores)[all_kept]
        all_lengths = self.accelerator.gather(rollout.mask.sum(-1))[all_kept]
        all_groups = [g for g, k in zip(consecutive_groups(len(all_kept), c.samples_per_prompt), all_kept.tolist(),
                                        strict=True) if k]
        return {"reward_mean": all_rewards.mean().item(),
                "reward_std": all_rewards.std().item() if all_rewards.numel() > 1 else 0.0,
                "reward_dropped": scored.dropped,
                "reward_samples": len(all_kept),
                "length_reward_corr": length_reward_corr(all_lengths.tolist(), all_rewards.tolist(), all_groups),
                **label_metrics(kept_items),
                **judge_text_metrics(kept_items, c.disagreement_threshold),
                **principle_means(kept_items)}

    def _mean(self, x: torch.Tensor) -> float:
        return self.accelerator.gather(x.float().mean().reshape(1)).mean().item()

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> tuple[dict, list]:
        """One held-out evaluation at the current step (trainer/analysis/heldout_eval.py): the
        proxy's and each monitor's rewards on the same sampled responses, and their KL."""
        c = self.config
        sampler = self.sampler if c.eval_samples else Sampler.for_policy(
            self.accelerator.unwrap_model(self.model).policy, self.tokenizer, c.temperature, c.max_new_tokens,
            greedy=True)
        return self.heldout.evaluate(self.step_done, self.accelerator.unwrap_model(self.model).policy,
                                     self.reference, sampler, self.accelerator.device, self.accelerator.autocast)

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        path = self.output_dir / "checkpoints" / f"step-{self.step_done:06d}"
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            (path / "drlaif_state.json").write_text(json.dumps(
                {"step": self.step_done, "kl": self.kl.state_dict(), "config": asdict(self.config)}, indent=2))
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "drlaif_state.json").read_text())
        self.accelerator.load_state(str(path))
        self.step_done = state["step"]
        self.kl.load_state_dict(state["kl"])

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.output_dir / "checkpoints").glob("step-*/drlaif_state.json"))
        return found[-1].parent if found else None

    def save_final(self) -> Path:
        path = self.output_dir / "final"
        policy = self.accelerator.unwrap_model(self.model).policy
        if self.config.lora_r > 0:
            policy = policy.merge_and_unload()
        if self.accelerator.is_main_process:
            policy.save_pretrained(path)
            self.tokenizer.padding_side = "right"
            self.tokenizer.save_pretrained(path)
            self.tokenizer.padding_side = "left"
        return path

    # ----------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run the remaining steps, evaluate, write the report; returns the summary.

        Raises :class:`RewardUnavailable` (after saving a checkpoint) when the reward server stays
        unreachable past the deadline. Either way, each reward server's requests and failures are
        logged at the end.
        """
        try:
            return self._train()
        finally:
            # A fake reward source (tests, benches) has no servers to report on.
            log_replica_stats = getattr(self.reward, "log_replica_stats", None)
            if log_replica_stats is not None:
                log_replica_stats()

    def _train(self) -> dict:
        c = self.config
        if c.resume:
            path = self.latest_checkpoint() if c.resume == "auto" else Path(c.resume)
            if path is None:
                log.info("no checkpoint in %s; starting fresh", self.output_dir)
            else:
                self.load_checkpoint(path)
                log.info("resumed from %s at step %d", path, self.step_done)
        self.metrics.start_at(self.step_done)
        if self.heldout:
            self.heldout.resume()
        summary: dict = {}
        if self.heldout and self.step_done == 0:
            summary["before"], _ = self.evaluate()
            self._say(f"held-out reward before training: {summary['before']['reward_mean']:+.4f} "
                      f"({summary['before']['n']} prompts)")
        bar = tqdm(range(self.step_done, c.steps), initial=self.step_done, total=c.steps, desc="ppo",
                   disable=not self.accelerator.is_main_process)
        evaluated_at = None
        for step in bar:
            try:
                metrics = self.step(step)
                self.step_done = step + 1
                self.metrics.write(metrics)
                bar.set_postfix(reward=f"{metrics['reward_mean']:+.3f}", kl=f"{metrics['kl']:.3f}")
                if self.heldout and c.eval_every and self.step_done % c.eval_every == 0:
                    (summary["after"], alarms), evaluated_at = self.evaluate(), self.step_done
                    if alarms and c.stop_on_overoptimisation:
                        self._say(f"stopping at step {self.step_done} (--stop-on-overoptimisation)")
                        summary["stopped_early"] = self.step_done
                        break
            except RewardServerError as exc:  # TooManyDropped included
                path = self.save_checkpoint()
                raise RewardUnavailable(f"{exc}\nsaved a resumable checkpoint at {path}; "
                                        f"rerun with --resume auto once the server is back") from exc
            if c.save_every and self.step_done % c.save_every == 0 and self.step_done < c.steps:
                self.save_checkpoint()
        self.save_checkpoint()
        summary["final_model"] = str(self.save_final())
        if self.heldout and evaluated_at != self.step_done:
            summary["after"], _ = self.evaluate()
        if self.heldout:
            self._say(f"held-out reward after training:  {summary['after']['reward_mean']:+.4f}")
        summary["kl_budget"] = c.target_kl or None
        summary.update(self.heldout.summary() if self.heldout else {"alarms": [], "evaluations": []})
        if self.accelerator.is_main_process:
            self._say(write_run_files(self.output_dir, self.metrics, summary))
        self.metrics.close()
        return summary

    def close(self) -> None:
        self.reward.close()
        if self.heldout:
            self.heldout.close()

    def _say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)


def _has_dropout(model: torch.nn.Module) -> bool:
    """Whether a forward in train mode can differ from one in eval mode: a dropout layer, or an
    attention dropout (Hugging Face models apply it inside attention, from their config)."""
    config = getattr(model, "config", None)
    attention = getattr(config, "attention_dropout", 0.0) or 0.0
    return attention > 0 or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
