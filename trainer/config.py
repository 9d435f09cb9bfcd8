"""Trainer configuration: dataclasses whose fields document themselves, and the CLI
generated from them (flags, plus an optional YAML file; flags win over the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from drlaif.config_fields import documented


@dataclass
class TrainConfig:
    """Settings shared by every algorithm."""

    reward_url: list[str] = documented(
        ["http://127.0.0.1:8000"],
        "Reward server base URL(s); several are replicas: each request goes to a less "
        "loaded one, and one that fails is skipped until it is ready again.")
    rubric: str | None = documented(None, "Rubric the server scores with (server default when unset).")
    model: str | None = documented(
        None, "Policy: hub id or local dir. Unset: the embedded SmolLM2-135M-Instruct.")
    dataset: str | None = documented(
        None, "Prompts: a local .jsonl/.json/.csv/.parquet file or a hub dataset id. "
        "Unset: the prompt set shipped with drlaif.")
    dataset_split: str = documented("train", "Split to read from a hub dataset.")
    prompt_field: str = documented(
        "prompt", "Field holding the prompt (string, chat messages, or HH transcript). "
        "Records with only `chosen` are read as HH-RLHF.")
    reference_field: str = documented(
        "reference", "Field holding a prompt's reference answer (a gold answer, a reference summary): sent with "
        "its responses to a rubric that judges against one (`takes_reference` in the server's /info, e.g. "
        "correctness), which then needs it for every prompt; other rubrics never see it.")
    eval_prompts: int = documented(32, "Held-out prompts scored before and after training (0 to skip).")
    eval_samples: int = documented(
        4, "Responses per held-out prompt, sampled at the training temperature from a fixed seed (the same "
        "before and after, so sampling noise largely cancels in the paired gain); 0: one greedy response. "
        "Sampling judges the policy that was trained: greedy decoding of a policy trained for a few steps "
        "can fall into repetition that sampling does not show.")
    output_dir: str = documented("runs/ppo", "Checkpoints, metrics.jsonl, curves.png and the final policy.")
    steps: int = documented(20, "Number of policy updates.")
    batch_size: int = documented(
        8, "Rollouts (sampled responses) per update, per process; each prompt is sampled samples_per_prompt "
        "(ppo) or num_generations (grpo, rloo) times, so a batch holds batch_size / that many prompts.")
    max_new_tokens: int = documented(32, "Longest sampled response, in tokens.")
    temperature: float = documented(1.0, "Sampling temperature for rollouts.")
    learning_rate: float = documented(
        1e-4, "Peak learning rate. Suits the 135M embedded policy (the quickstart gives the demo's gain with it; "
        "3e-5 left the demo's held-out reward unchanged); use ~1e-5 for 1B+ models.")
    seed: int = documented(0, "Random seed (data order, sampling, initialisation of the value head).")
    resume: str | None = documented(
        None, "Checkpoint dir to resume from, or 'auto' for the latest in output_dir.")
    save_every: int = documented(10, "Save a resumable checkpoint every N steps (0: only at the end).")
    mixed_precision: Literal["no", "fp16", "bf16"] = documented("no", "accelerate mixed precision.")
    lora_r: int = documented(
        0, "LoRA rank (0: full fine-tuning). The reference is the base with adapters off.")
    lora_alpha: int = documented(32, "LoRA alpha.")
    reward_timeout_s: float = documented(120.0, "Read timeout of one reward request.")
    reward_deadline_s: float = documented(
        300.0, "Give up on the reward server after this long (then save and exit).")
    reward_field: Literal["reward", "reward_robust", "reward_as_written"] = documented(
        "reward", "Which of the server's rewards to optimise. 'reward' is defended by the rubric's guard (by "
        "default the lower of the read as written and the read without text that addresses the judge); "
        "'reward_robust' is the read without that text; 'reward_as_written' is undefended (for ablations).")
    reward_mode: Literal["direct", "group-pairwise"] | None = documented(
        None, "How rollouts are judged. Unset: as the rubric says (group-pairwise when its group_pairwise is "
        "true, else direct; direct on a server without /info). 'direct': each response scored alone on the "
        "rubric's scale. "
        "'group-pairwise': the responses to one prompt (samples_per_prompt / num_generations of them) compared "
        "with each other in both orders, each one's reward its mean win probability mapped to [-1, 1] (the "
        "rubric needs a compare section; costs about group_opponents pair reads per response).")
    group_opponents: int | None = documented(
        None, "group-pairwise: opponents per response (unset: the server's --group-opponents, 4 by default). Each "
        "response meets its ceil(k/2) neighbours either side of a circle of its group, so its cost does not grow "
        "with the group; k >= group size - 1 compares every pair (at most 16).")
    disagreement_threshold: float = documented(
        0.1, "Metrics count a rollout as a disagreement when its reward as written and its robust reward differ "
        "by more than this (logged as reward_disagreement: the share of such rollouts).")

    on_reward_failure: Literal["stop", "drop"] = documented(
        "stop", "What a reward the client could not get within reward_deadline_s costs. 'stop': the run "
        "(a resumable checkpoint is saved). 'drop': only the samples without reward, which are left out of "
        "that update (never given a number) and counted as reward_dropped; the batch is rescored one sample "
        "per request first, so one failing sample does not take its batch with it.")
    max_dropped_fraction: float = documented(
        0.1, "With on_reward_failure 'drop': stop (after saving a checkpoint) when more than this share of a "
        "step's samples had no reward; a larger share is an outage, not a bad sample.")
    length_control: bool = documented(
        False, "Optimise a length-controlled reward: each reward minus a least-squares slope on length times "
        "the response's length deviation from its group (responses to the same prompt) mean, so a judge's "
        "preference for longer answers within a group is not learned. Logged rewards stay the server's.")

    tensorboard: bool = documented(False, "Also log to TensorBoard in output_dir/tb (needs `tensorboard`).")

    monitor: list[str] = documented(
        [], "Monitor judges, [NAME=]URL[#rubric] (another server, model or rubric): they score the held-out "
        "responses at every evaluation, beside the proxy (the reward_url judge), and are never optimised. "
        "Named NAME, else model#rubric from the server's /info, else host:port.")
    eval_every: int = documented(
        0, "Also evaluate on the held-out prompts every N steps (0: only before and after training). Each "
        "evaluation is a row of evals.jsonl and is checked for over-optimisation when monitors are set.")
    alarm_window: int = documented(
        3, "The over-optimisation alarm compares each evaluation with the one this many evaluations earlier "
        "(or the first): it fires when the proxy rose beyond its 95 percent paired interval and a monitor fell "
        "beyond an interval corrected for the run's checks and monitors (at most a 2.5 percent false alarm "
        "per run).")
    stop_on_overoptimisation: bool = documented(
        False, "When the over-optimisation alarm fires: save a checkpoint and the final policy, write the "
        "report and stop (without it the run only warns).")

    def __post_init__(self) -> None:
        if not self.disagreement_threshold >= 0:
            raise ValueError(f"disagreement_threshold must be >= 0, got {self.disagreement_threshold}")
        if not 0 <= self.max_dropped_fraction <= 1:
            raise ValueError(f"max_dropped_fraction must lie in [0, 1], got {self.max_dropped_fraction}")
        if self.group_opponents is not None and self.group_opponents < 1:
            raise ValueError(f"group_opponents must be >= 1, got {self.group_opponents}")
        if self.eval_every < 0 or self.alarm_window < 1:
            raise ValueError(f"eval_every must be >= 0 and alarm_window >= 1, got {self.eval_every} and "
                             f"{self.alarm_window}")
        from trainer.analysis.monitor_spec import MonitorSpec

        for spec in self.monitor:
            MonitorSpec.parse(spec)  # ValueError on a malformed one, before any model loads
        if self.monitor and not self.eval_prompts:
            raise ValueError("monitor judges score the held-out prompts: set eval_prompts > 0")


@dataclass
class PPOConfig(TrainConfig):
    """PPO with a value model, a frozen reference, per-token KL and GAE (defaults after
    Lee et al. 2023 and Ziegler et al. 2019)."""

    ppo_epochs: int = documented(
        2, "Optimisation epochs over each batch of rollouts. Two gain more per rollout than one (a 20-step "
        "bench/trainer_peers.py run: +0.227 against +0.007 for one epoch in two minibatches) for ~4 s more "
        "per step on 2 CPU cores.")
    minibatch_size: int = documented(8, "Rollouts per gradient step (before accumulation).")
    gradient_accumulation_steps: int = documented(1, "Minibatches accumulated per optimizer step.")
    kl_coef: float = documented(
        0.2, "KL penalty coefficient, per token; with target_kl, the adaptive coefficient's start and floor. "
        "Higher than Lee et al.'s 0.05 because the default budget is small: on the demo, 0.05 let the KL reach "
        "7-8 nats per response even with the controller.")
    kl_penalty: Literal["loss", "reward"] = documented(
        "loss", "Where the KL to the reference enters: 'loss' adds kl_coef * the k3 estimate per token to the "
        "policy loss (as GRPO), 'reward' shapes every token's reward (Ziegler; Lee et al.). In the reward, the "
        "sampled log-ratios' noise (several nats per response) lands in every advantage and drowned the score "
        "(bench/trainer_peers.py: gain +0.220 with 'reward' at kl_coef 0.02, +0.320 with 'loss').")
    target_kl: float = documented(
        4.0, "KL budget: the policy's KL to the reference, in nats per response, that the adaptive KL "
        "coefficient steers towards (Ziegler et al.'s proportional controller; 0: kl_coef stays fixed). "
        "The report and the demo give the held-out KL against it.")
    kl_horizon: int | None = documented(
        None, "Horizon of the adaptive KL controller, in rollouts: a step moves kl_coef by at most 20 percent "
        "times the step's rollouts / horizon. Unset: one step's rollouts (20 percent per step).")
    gamma: float = documented(1.0, "Discount.")
    lam: float = documented(
        1.0, "GAE lambda. 1: Monte-Carlo returns minus the value baseline (Lee et al.'s REINFORCE with a "
        "baseline); below 1 a young critic shifts the terminal reward's credit to the last tokens.")
    clip_range: float = documented(0.2, "Policy ratio clip.")
    clip_range_value: float | None = documented(
        None, "Value clip around the rollout's values (None: off). An absolute clip of 0.2 keeps a "
        "critic that starts far off from catching up with returns.")
    vf_coef: float = documented(0.1, "Weight of the value loss.")
    value_model: Literal["head", "separate"] = documented(
        "head", "Critic: 'head' is a scalar head on the policy's last hidden state (gradient stopped, so it "
        "cannot pull the policy; no second backbone to run), 'separate' a full copy of the backbone.")
    value_learning_rate: float = documented(
        1e-3, "Learning rate of the value head, which starts at V = 0 and must catch up within a few steps.")
    whiten_advantages: bool = documented(True, "Normalise advantages per batch.")
    max_grad_norm: float = documented(1.0, "Gradient clipping norm.")
    lr_schedule: Literal["linear", "cosine", "constant"] = documented("linear", "Learning-rate schedule.")
    warmup_steps: int = documented(
        10, "Linear warm-up, in optimizer steps. Adam's first updates move every weight by about the full "
        "learning rate: without warm-up one step took the demo's policy 9 nats from its reference.")
    missing_eos_penalty: float | None = documented(
        None, "Subtracted from the score of responses that hit max_new_tokens without EOS. Off: the server "
        "scores a truncated answer as it stands, which already costs it what is missing.")
    samples_per_prompt: int = documented(
        4, "Responses sampled per prompt in a step (batch_size / samples_per_prompt prompts). Several "
        "responses to one prompt let the advantage compare answers to the same question.")
    advantage_estimator: Literal["group", "gae"] = documented(
        "group", "'group': each response's score minus the mean of its siblings' (leave-one-out), then "
        "KL-shaped returns; the prompt's difficulty drops out, which a young critic cannot do. 'gae': GAE "
        "on the critic's values (classic PPO; pair with samples_per_prompt 1 for 8 distinct prompts).")
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 1 or self.batch_size % self.samples_per_prompt:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of samples_per_prompt "
                             f"({self.samples_per_prompt})")
        if self.reward_mode == "group-pairwise" and self.samples_per_prompt < 2:
            raise ValueError("reward_mode 'group-pairwise' needs samples_per_prompt >= 2 (responses to compare)")
        if self.advantage_estimator == "group" and self.samples_per_prompt < 2:
            raise ValueError("advantage_estimator 'group' needs samples_per_prompt >= 2 "
                             "(or use --advantage-estimator gae)")
        if self.target_kl < 0 or (self.kl_horizon is not None and self.kl_horizon < 1):
            raise ValueError(f"target_kl must be >= 0 (0: a fixed kl_coef) and kl_horizon >= 1, got "
                             f"{self.target_kl} and {self.kl_horizon}")


@dataclass
class TRLConfig(TrainConfig):
    """GRPO / RLOO through trl, with the same reward server."""

    num_generations: int = documented(4, "Responses sampled per prompt (the group).")
    beta: float = documented(0.05, "KL coefficient towards the reference.")


def _field_type(tp: Any) -> tuple[Any, bool]:
    """(base type, optional?) of an annotation like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def build_parser(config_cls: type, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one flag per dataclass field; defaults are documented from the dataclass."""
    parser.add_argument("--config", type=Path, help="YAML file with any of these settings (flags win).")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, _optional = _field_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, nargs="+", type=typing.get_args(tp)[0], **kwargs)
        elif typing.get_origin(tp) is Literal:
            parser.add_argument(flag, choices=typing.get_args(tp), **kwargs)
        else:
            parser.add_argument(flag, type=tp, **kwargs)
    return parser


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """A YAML value as the field's type (YAML reads `1e-5` as a string), or ValueError."""
    tp, optional = _field_type(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError(f"setting {name!r} cannot be null")
    try:
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if typing.get_origin(tp) is list:
            return [typing.get_args(tp)[0](v) for v in ([value] if isinstance(value, str) else value)]
        if typing.get_origin(tp) is Literal:
            if value not in typing.get_args(tp):
                raise TypeError
            return value
        if tp is int and (isinstance(value, bool) or float(value) != int(float(value))):
            raise TypeError
        return tp(float(value)) if tp is int else tp(value)
    except (TypeError, ValueError):
        expected = typing.get_args(tp) if typing.get_origin(tp) is Literal else getattr(tp, "__name__", tp)
        raise ValueError(f"setting {name!r}: {value!r} is not a valid {expected}") from None


def load_config(config_cls: type, args: argparse.Namespace) -> Any:
    """Defaults, then the YAML file, then the flags given on the command line."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(config_cls)}
    if getattr(args, "config", None):
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings")
        hints = typing.get_type_hints(config_cls)
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"{args.config}: unknown setting {key!r}")
            values[name] = _coerce(name, hints[name], value)
    values.update({k: v for k, v in vars(args).items() if k in names})
    return config_cls(**values)
