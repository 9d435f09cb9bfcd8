"""Held-out evaluation, monitors, the alarm and the run report for trl's GRPO and RLOO.

A trl ``TrainerCallback`` mirrors trl's logged values into metrics.jsonl under drlaif's names
and runs the evaluation that PPO runs between its steps
(trainer/analysis/heldout_eval.py): before the first step, every ``eval_every`` steps and after
the last, on the same held-out prompts and sampling seed. It writes evals.jsonl, checks the
over-optimisation alarm (stopping trl when ``stop_on_overoptimisation`` is set), and at the end
writes curves.png, overoptimisation.png, report.md and summary.json as PPO does.

``drlaif-train grpo`` and ``rloo`` attach it (trainer/frameworks/trl_training.py); a trl script
of your own can too, with the reward function of trainer/frameworks/trl_reward.py::

    config = TRLConfig(reward_url=[url], rubric="helpful", output_dir="runs/grpo", steps=100,
                       eval_prompts=32, eval_every=10, monitor=["http://other-judge:8000"])
    heldout = HeldOutCallback(config, eval_prompts)
    trainer = GRPOTrainer(model=..., reward_funcs=make_reward_func(url, rubric="helpful"),
                          args=GRPOConfig(output_dir="runs/grpo", max_steps=100), train_dataset=dataset,
                          callbacks=[heldout])
    heldout.attach(trainer)  # before training: the KL's reference is the policy as it starts
    trainer.train()
    heldout.close()

``config`` says what the evaluation reads: the proxy (``reward_url``, ``rubric``,
``reward_field``), the monitors, the held-out sampling (``eval_samples``, ``temperature``,
``max_new_tokens``, ``seed``), when (``eval_every``; ``steps`` should be trl's ``max_steps``, the
alarm's count of checks) and where (``output_dir``). Its training fields are not read here.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from trainer.analysis.heldout_eval import HeldOutEval
from trainer.analysis.metrics_log import MetricsLog
from trainer.analysis.run_report import write_run_files
from trainer.config import TRLConfig
from trainer.data.prompt_datasets import Prompt, References
from trainer.ppo.sampling import Sampler

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase, Trainer

log = logging.getLogger(__name__)

# trl's names for what drlaif's metrics.jsonl calls otherwise; the reward function's own metrics
# are logged as "<its name>/<metric>".
_TRL_NAMES = {"reward_mean": "reward", "reward_std": "reward_std", "kl": "kl", "entropy": "entropy",
              "response_length_mean": "completions/mean_length", "step_seconds": "step_time"}
_REWARD_FUNC_NAMES = {"length_reward_corr": "length_reward_corr", "label_entropy": "label_entropy",
                      "label_mass": "label_mass", "reward_dropped": "dropped", "judge_text_rate": "judge_text_rate",
                      "reward_disagreement": "reward_disagreement", "reward_robust_gap": "reward_robust_gap"}


def metrics_row(logs: dict, step: int) -> dict:
    """One metrics.jsonl row from trl's logged values: drlaif's names (as PPO's rows have them)
    beside every number trl logged. A reward-function metric trl did not log is None (the
    length correlation, say, when no group had two lengths and two rewards)."""
    return {**{name: next((v for k, v in logs.items() if k.endswith(f"/{key}")), None)
               for name, key in _REWARD_FUNC_NAMES.items()},
            "step": step, **{name: logs.get(key, 0.0) for name, key in _TRL_NAMES.items()},
            **{k: v for k, v in logs.items() if isinstance(v, int | float)}}


class HeldOutCallback(TrainerCallback):
    """Evaluates a trl trainer's policy on held-out prompts and writes the run's report.

    Pass it in the trainer's ``callbacks`` and ``attach`` it to the trainer once that is built,
    before training: the callback needs its model, reference and accelerator, which trl creates.

    Args:
        config: What to evaluate with (see the module's docstring).
        eval_prompts: The held-out prompts (strings or chat messages); the first
            ``config.eval_prompts`` are used.
        metrics: Where evals.jsonl (and the report's per-step curves, from metrics.jsonl) go;
            default: ``config.output_dir``.
        tokenizer: The policy's tokenizer; default: the trainer's ``processing_class``.
        references: The prompts' reference answers, for a proxy or monitor rubric that judges
            against one.
    """

    def __init__(self, config: TRLConfig, eval_prompts: list[Prompt], metrics: MetricsLog | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, references: References | None = None):
        if metrics is None:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
            metrics = MetricsLog(Path(config.output_dir))
        self.config, self.metrics, self.tokenizer = config, metrics, tokenizer
        self.heldout = HeldOutEval(config, eval_prompts, metrics, references) if config.eval_prompts else None
        self.summary: dict = {}
        self._trainer: Trainer | None = None
        self._reference: nn.Module | None = None
        self._started = False
        self._evaluated_at: int | None = None

    def attach(self, trainer: Trainer) -> None:
        """Read the policy and its reference from ``trainer`` (trl's GRPOTrainer or RLOOTrainer)."""
        self._trainer = trainer
        if self.tokenizer is None:
            self.tokenizer = trainer.processing_class
        ref = getattr(trainer, "ref_model", None)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if ref is not None:
            self._reference = trainer.accelerator.unwrap_model(ref)
        elif not hasattr(policy, "disable_adapter"):
            # With beta 0 (trl's default) trl keeps no reference; the KL to the starting policy is
            # still the number the report and the plot are read against. A copy of the policy trl
            # is about to train is that policy, wherever it came from (a hub id, a directory, a
            # model object built in a script).
            self._reference = copy.deepcopy(policy).eval().requires_grad_(False)
            self._reference.to(trainer.accelerator.device)

    def _evaluate(self, step: int) -> list:
        trainer, c = self._trainer, self.config
        policy = trainer.accelerator.unwrap_model(trainer.model)
        sampler = Sampler.for_policy(policy, self.tokenizer, c.temperature, c.max_new_tokens,
                                     greedy=not c.eval_samples)
        evaluation, alarms = self.heldout.evaluate(step, policy, self._reference, sampler,
                                                   trainer.accelerator.device, trainer.accelerator.autocast)
        self.summary.setdefault("before", evaluation)
        self.summary["after"], self._evaluated_at = evaluation, step
        if trainer.is_world_process_zero():
            log.info("held-out reward at step %d: %+.4f (%d prompts)", step, evaluation["reward_mean"] or 0.0,
                     evaluation["n"])
        return alarms

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Each process logs the same gathered values: the main one writes them.
        if state.is_world_process_zero and logs and "reward" in logs:
            self.metrics.write(metrics_row(logs, state.global_step))

    def on_step_begin(self, args, state, control, **kwargs):
        # Not on_train_begin: trl's Trainer restores a resumed run's step only after that event.
        if self._started:
            return
        self._started = True
        self.metrics.start_at(state.global_step)
        if self.heldout:
            self.heldout.resume()
            if state.global_step == 0:
                self._evaluate(0)

    def on_step_end(self, args, state, control, **kwargs):
        c = self.config
        if not (self.heldout and c.eval_every and state.global_step % c.eval_every == 0):
            return
        if self._evaluate(state.global_step) and c.stop_on_overoptimisation:
            log.warning("stopping at step %d (--stop-on-overoptimisation)", state.global_step)
            self.summary["stopped_early"] = state.global_step
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.heldout and self._evaluated_at != state.global_step:
            self._evaluate(state.global_step)
        self.summary["kl_budget"] = None  # trl's beta is a fixed coefficient, not a budget
        self.summary.update(self.heldout.summary() if self.heldout else {"alarms": [], "evaluations": []})
        if self._trainer.is_world_process_zero():
            print(write_run_files(self.config.output_dir, self.metrics, self.summary), flush=True)

    def close(self) -> None:
        if self.heldout:
            self.heldout.close()
