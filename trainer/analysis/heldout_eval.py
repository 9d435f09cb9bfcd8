"""Held-out evaluation for every algorithm: sampling, the judges, the alarm, evals.jsonl.

PPO calls it between its steps; GRPO and RLOO through a trl callback
(trainer/frameworks/trl_heldout.py). At each evaluation the same held-out prompts get
``eval_samples`` responses each from a fixed sampling seed; the proxy (the judge the run
optimises) and every monitor judge score the same responses; the policy's KL to its reference
is read on them; the over-optimisation alarm (trainer/analysis/overoptimisation_alarm.py) is
checked and the evaluation becomes a row of evals.jsonl.

The proxy is read directly (each response alone on the rubric's scale) whatever the run's
``reward_mode``. A group-pairwise reward is a response's standing within its own group, so its
mean over a prompt's samples is 0 by construction: a held-out curve of it is flat, and the
alarm could never see the proxy rise. The direct read of the same rubric by the same judge is
the absolute quality that those comparisons rank, and it moves as the policy improves or games.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from drlaif.client import RewardClient, RewardClientConfig, RewardServerError, rewards_of
from drlaif.reward_failures import check_dropped, score_items_or_drop
from trainer.analysis.metrics_log import MetricsLog
from trainer.analysis.monitor_spec import MonitorSpec
from trainer.analysis.overoptimisation_alarm import Alarm, EvalPoint, check_alarms, eval_row
from trainer.config import TrainConfig
from trainer.data.prompt_datasets import Prompt, References, needs_references, reference_list
from trainer.ppo.sampling import Rollout, Sampler, response_kl

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 7_919  # the held-out sampling seed is the run's seed plus this, never the training stream


def planned_checks(steps: int, eval_every: int) -> int:
    """How many evaluations after the first a run of ``steps`` makes (each one an alarm check):
    one every ``eval_every`` steps and one at the end when the last step is not one of those."""
    if not eval_every:
        return 1
    return max(1, steps // eval_every + (steps % eval_every != 0))


def mean_or_none(values: list[float | None]) -> float | None:
    """Mean of the values that exist (None when none does): a dropped reward is no number."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def monitor_name(spec: MonitorSpec, client_config: RewardClientConfig) -> str:
    """What a monitor is called in the logs, evals.jsonl, report.md and the plot: the name the user
    gave, else its judge's model and rubric from the server's /info (``model#rubric``), else (no
    /info, as on a server of one's own) its host:port and rubric."""
    if spec.name:
        return spec.name
    probe = RewardClient(replace(client_config, deadline_s=10.0, max_attempts=3))
    try:
        info = probe.info()
        model = str(info["model"]).rstrip("/").rsplit("/", 1)[-1]
        return f"{model}#{spec.rubric or info['default_rubric']}"
    except (RewardServerError, KeyError, TypeError) as exc:
        log.info("monitor %s: no model name from /info (%s); named by its address", spec.url,
                 str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return spec.address
    finally:
        probe.close()


def _distinct(names: list[str], specs: list[MonitorSpec]) -> list[str]:
    """Two monitors of the same model and rubric (say, two replicas) get their addresses added."""
    return [f"{n} ({s.address})" if names.count(n) > 1 else n for n, s in zip(names, specs, strict=True)]


class HeldOutEval:
    """One run's held-out evaluations: its prompts, proxy and monitors, points and alarms."""

    def __init__(self, config: TrainConfig, prompts: list[Prompt], metrics: MetricsLog,
                 references: References | None = None):
        """``references``: the prompts' reference answers, sent to the proxy's and each monitor's
        rubric where it judges against one."""
        c = self.config = config
        self.prompts = prompts[:c.eval_prompts]
        self.references = references or {}
        self.metrics = metrics
        self.checks = planned_checks(c.steps, c.eval_every)
        client = RewardClientConfig(urls=list(c.reward_url), rubric=c.rubric, read_timeout_s=c.reward_timeout_s,
                                    deadline_s=c.reward_deadline_s, reward_field=c.reward_field,
                                    reward_mode="direct")
        self.proxy = RewardClient(client)
        self.send_references = {"": needs_references(self.proxy.takes_reference, c.rubric, self.prompts,
                                                     self.references, c.reference_field)}
        specs = [MonitorSpec.parse(s) for s in c.monitor]
        configs = [RewardClientConfig(urls=[s.url], rubric=s.rubric, read_timeout_s=c.reward_timeout_s,
                                      deadline_s=c.reward_deadline_s) for s in specs]
        names = _distinct([monitor_name(s, cfg) for s, cfg in zip(specs, configs, strict=True)], specs)
        # Monitor judges score held-out responses only; their rewards never reach the policy.
        self.monitors = {name: RewardClient(cfg) for name, cfg in zip(names, configs, strict=True)}
        for name, spec in zip(names, specs, strict=True):
            log.info("monitor %s: %s%s", name, spec.url, f" (rubric {spec.rubric})" if spec.rubric else "")
            self.send_references[name] = self._monitor_takes_references(name, spec)
        self.points: list[EvalPoint] = []
        self.alarms: list[Alarm] = []

    def resume(self) -> None:
        """Pick up the evaluations (and their alarms) that evals.jsonl holds for the steps kept."""
        rows = self.metrics.read_evals()
        self.points = [EvalPoint.from_dict(row) for row in rows]
        self.alarms = [Alarm.from_dict(a) for row in rows for a in row.get("alarms", [])]

    @torch.no_grad()
    def evaluate(self, step: int, policy: nn.Module, reference: nn.Module | None, sampler: Sampler,
                 device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager] | None = None
                 ) -> tuple[dict, list[Alarm]]:
        """Sample, judge and record one evaluation at ``step``; returns it and the alarms it raised.

        With ``eval_samples`` k > 0, each prompt gets k responses sampled from ``sampler`` and its
        reward is their mean: the policy as trained, not its greedy mode. With k = 0, ``sampler``
        should be greedy and each prompt gets one response (the KL is then only indicative). The
        seed is fixed and the caller's random state left untouched, so every evaluation draws the
        same random numbers and sampling noise largely cancels in paired changes. A sample dropped
        for want of a reward (``on_reward_failure`` drop) is left out of its prompt's mean; a prompt
        with none left has None. A monitor that fails is None there, never the run's end.
        ``reference`` None: the policy with its LoRA adapters off.
        """
        c, k = self.config, max(1, self.config.eval_samples)
        # Larger generation batches than training's: on a CPU a batch of 32 costs far less than
        # four of 8, and the held-out set is read at every evaluation.
        chunk = max(1, max(c.batch_size, 32) // k)
        was_training = policy.training
        examples, kl_sums = [], []
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(c.seed + EVAL_SEED_OFFSET)
            for start in range(0, len(self.prompts), chunk):
                group = [p for p in self.prompts[start:start + chunk] for _ in range(k)]
                rollout = sampler.sample(policy, group, device)
                kl = response_kl(policy, reference, rollout, c.temperature, autocast() if autocast else None)
                rewards = self._proxy_rewards(rollout)
                monitors = {name: self._monitor_rewards(name, client, rollout, self._references(name, rollout))
                            for name, client in self.monitors.items()}
                kl_sums += kl
                for i in range(0, len(group), k):
                    examples.append({"prompt": group[i], "response": rollout.responses[i],
                                     "responses": rollout.responses[i:i + k], "kl": float(np.mean(kl[i:i + k])),
                                     "reward": mean_or_none(rewards[i:i + k]), "rewards": rewards[i:i + k],
                                     "monitors": {name: mean_or_none(r[i:i + k]) for name, r in monitors.items()}})
        policy.train(was_training)
        evaluation = {"reward_mean": mean_or_none([e["reward"] for e in examples]), "n": len(examples),
                      "samples_per_prompt": c.eval_samples, "kl": float(np.mean(kl_sums)) if kl_sums else 0.0,
                      "proxy_read": "direct", "examples": examples,
                      "monitors": {name: mean_or_none([e["monitors"][name] for e in examples])
                                   for name in self.monitors}}
        return evaluation, self._record(step, evaluation)

    def _monitor_takes_references(self, name: str, spec: MonitorSpec) -> bool:
        """Whether a monitor's rubric judges against reference answers (they must then cover the
        held-out prompts); a monitor that cannot say now is read without them."""
        try:
            return needs_references(self.monitors[name].takes_reference, spec.rubric, self.prompts, self.references,
                                    self.config.reference_field)
        except RewardServerError as exc:
            log.warning("monitor %s: could not read its rubric from /info (%s); its reads go without reference "
                        "answers", name, str(exc).splitlines()[0])
            return False

    def _references(self, name: str, rollout: Rollout) -> list[str | None] | None:
        """The rollout's reference answers for the proxy ("") or a monitor, where its rubric takes them."""
        return reference_list(rollout.prompts, self.references, self.send_references[name])

    def _proxy_rewards(self, rollout: Rollout) -> list[float | None]:
        c = self.config
        references = self._references("", rollout)
        if c.on_reward_failure != "drop":
            return self.proxy.score(rollout.prompts, rollout.responses, c.rubric, references)
        scored = score_items_or_drop(self.proxy, rollout.prompts, rollout.responses, c.rubric,
                                     references=references)
        check_dropped(sum(s is None for s in scored), len(scored), c.max_dropped_fraction, "held-out samples")
        kept = iter(rewards_of([s for s in scored if s is not None], c.reward_field))
        return [next(kept) if s is not None else None for s in scored]

    @staticmethod
    def _monitor_rewards(name: str, client: RewardClient, rollout: Rollout,
                         references: list[str | None] | None) -> list[float | None]:
        try:
            return client.score(rollout.prompts, rollout.responses, references=references)
        except RewardServerError as exc:
            log.warning("monitor %s gave no rewards at this evaluation: %s", name, str(exc).splitlines()[0])
            return [None] * len(rollout.prompts)

    def _record(self, step: int, evaluation: dict) -> list[Alarm]:
        examples = evaluation["examples"]
        self.points.append(EvalPoint(step, evaluation["kl"], [e["reward"] for e in examples],
                                     {name: [e["monitors"][name] for e in examples] for name in self.monitors}))
        alarms = check_alarms(self.points, self.config.alarm_window, self.checks)
        self.metrics.write_eval(eval_row(self.points, alarms))
        for alarm in alarms:
            log.warning("%s", alarm.message())
        self.alarms += alarms
        return alarms

    def summary(self) -> dict:
        """The run summary's evaluation fields: every alarm and every evals.jsonl row."""
        return {"alarms": [a.as_dict() for a in self.alarms], "evaluations": self.metrics.read_evals()}

    def close(self) -> None:
        self.proxy.close()
        for client in self.monitors.values():
            client.close()
