"""A drlaif reward server as a reward function for trl's GRPOTrainer and RLOOTrainer.

trl (1.16) calls async reward functions as ``await f(prompts=..., completions=...,
completion_ids=..., **dataset_columns, trainer_state=..., log_extra=..., log_metric=...)`` on an
event loop of its own that runs in a daemon thread, and detects "async" with
``trl.trainer.utils.is_async_callable`` (which also accepts an object whose ``__call__`` is async).
It logs each reward function under its ``__name__``, e.g. ``rewards/drlaif_helpful/mean``.

The callable made here is an object rather than a closure so that it pickles: trl's async GRPO
rollout worker sends reward functions to a spawned process. Its HTTP client is created on first
call, inside whatever loop trl runs it on, and keeps one connection pool per loop.

Usage in your own script::

    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer
    from trainer.frameworks.trl_reward import make_reward_func

    reward = make_reward_func("http://127.0.0.1:8000", rubric="helpful", deadline_s=300)
    trainer = GRPOTrainer(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        reward_funcs=reward,            # or [reward, other_reward] with GRPOConfig(reward_weights=...)
        args=GRPOConfig(output_dir="runs/grpo", per_device_train_batch_size=8, num_generations=4),
        train_dataset=load_dataset("json", data_files="prompts.jsonl", split="train"),  # a "prompt" column
    )
    trainer.train()

The ``prompt`` column may hold strings or chat messages (``[{"role": "user", "content": ...}]``);
conversational completions are scored by their assistant text. If the server gives no valid
reward within the deadline, the call raises :class:`drlaif.client.RewardServerError` and training
stops: a reward is never invented. With ``on_failure="drop"`` the samples still without reward
after a per-sample retry (drlaif/reward_failures.py) are returned as None instead, which trl
(1.16) treats as unscorable when every reward function returns None for a sample: it is left
out of its group's baseline and its advantage is 0. Combined with other reward functions, the
others' rewards still count for that sample. More than ``max_dropped_fraction`` of a call
dropped raises :class:`drlaif.reward_failures.TooManyDropped`.

Under a rubric that judges against a reference answer (``takes_reference`` in the server's
``GET /info``, e.g. the ``correctness`` preset), each completion is judged against its dataset
row's ``reference`` column (trl passes every column to reward functions; ``reference_column``
names another); a dataset without that column is refused by name. Other rubrics never see it.

Rewards are judged as the rubric says: group-pairwise (each completion compared with the others
of its prompt) when its ``group_pairwise`` is true in the server's ``GET /info``, else directly;
``reward_mode="direct"`` or ``"group-pairwise"`` decides instead. trl passes its whole generation
batch, every prompt's ``num_generations`` completions, to one call, so groups are whole.

Each call also logs (``log_metric``) the label entropy and mass, the within-group correlation of
completion length (tokens) and reward, and the dropped count; ``length_control=True`` returns
length-controlled rewards (trainer/analysis/judge_signals.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from drlaif.client import (
    AsyncRewardClient,
    Prompt,
    RewardClientConfig,
    principle_means,
    rewards_of,
)
from drlaif.protocol import ItemAnswer
from drlaif.reward_failures import ascore_items_or_drop, check_dropped
from trainer.analysis.judge_signals import (
    groups_by_key,
    judge_text_metrics,
    label_metrics,
    length_controlled,
    length_reward_corr,
)


def _text(content: object, where: str) -> str:
    """Text of a message content: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if content is None:
        # An assistant turn that only calls tools has no text; that empty answer is what gets scored.
        return ""
    if isinstance(content, Sequence):
        # Multimodal form: [{"type": "text", "text": ...}, {"type": "image"}, ...]. The labeler
        # reads text only, so non-text parts are left out.
        if not all(isinstance(b, Mapping) for b in content):
            raise TypeError(f"{where}: content blocks must be objects like {{'type': 'text', 'text': ...}}")
        return "".join(str(b.get("text", "")) for b in content if b.get("type") == "text")
    raise TypeError(f"{where}: message content must be text or content blocks, got {type(content).__name__}")


def prompt_for_server(prompt: object) -> Prompt:
    """A trl prompt (string or list of chat messages) in the form /score accepts."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return [{"role": str(m.get("role")), "content": _text(m.get("content"), "prompt")} for m in prompt]
    raise TypeError(f"prompt must be a str or a list of chat messages, got {type(prompt).__name__}")


def completion_text(completion: object) -> str:
    """The response text of a trl completion: the string itself, or the last assistant message's text.

    trl's conversational completions are ``[{"role": "assistant", "content": ...}]``; with tool
    calling they may hold several turns, and the final assistant turn is the answer to score.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        turns = [m for m in completion if isinstance(m, Mapping) and m.get("role") == "assistant"]
        if turns:
            return _text(turns[-1].get("content"), "completion")
        raise ValueError(f"completion has no assistant message: {completion!r}")
    raise TypeError(f"completion must be a str or a list of chat messages, got {type(completion).__name__}")


def batch_metrics(items: Sequence[ItemAnswer], seconds: float,
                  disagreement_threshold: float = 0.1) -> dict[str, float]:
    """What a dashboard should show of one scored batch: a falling label mass means the labeler
    stopped answering on the scale, a rising judge-text rate or reward disagreement (PPO's
    guard signals, ``disagreement_threshold`` as its) that the policy is learning to talk to the
    judge; under a constitution, which principle the policy improves or sacrifices."""
    metrics = {**label_metrics(items), "reward_seconds": seconds}
    truncated = [i.truncated for i in items if i.truncated is not None]  # absent from another server's
    if truncated:
        metrics["truncated_rate"] = sum(truncated) / len(truncated)
    metrics.update(judge_text_metrics(items, disagreement_threshold))
    metrics.update(principle_means(items))  # a constitution: one reward curve per principle
    return metrics


class DrlaifRewardFunc:
    """An async reward callable for trl's `reward_funcs`; build it with
    [make_reward_func][trainer.frameworks.trl_reward.make_reward_func].

    It pickles (trl's async rollout worker sends reward functions to another process) and
    makes its HTTP client on first call, inside whatever event loop trl runs it on.

    Args:
        config: The reward client's settings.
        name: The name trl logs the reward and its metrics under.
        on_failure: `"stop"` (raise when the server gives no valid reward) or `"drop"` (return
            None for the samples still without reward after a retry of each on its own).
        max_dropped_fraction: With `"drop"`: raise when more than this share of a call's
            samples are dropped.
        length_control: Return length-controlled rewards (a within-group least-squares fit of
            reward on completion length taken out).
        disagreement_threshold: A sample counts towards the logged `reward_disagreement` when
            its reward as written and its robust reward differ by more than this.
        reference_column: The dataset column holding each prompt's reference answer, sent to a
            rubric that judges against one.
    """

    def __init__(self, config: RewardClientConfig, name: str, on_failure: str = "stop",
                 max_dropped_fraction: float = 0.1, length_control: bool = False,
                 disagreement_threshold: float = 0.1, reference_column: str = "reference"):
        if on_failure not in ("stop", "drop"):
            raise ValueError(f"on_failure must be 'stop' or 'drop', got {on_failure!r}")
        self.config = config
        self.__name__ = name  # trl names the reward's metrics after this
        self.on_failure = on_failure
        self.max_dropped_fraction = max_dropped_fraction
        self.length_control = length_control
        self.disagreement_threshold = disagreement_threshold
        self.reference_column = reference_column
        self._client: AsyncRewardClient | None = None
        self._lock = threading.Lock()

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       **kwargs: Any) -> list[float | None]:
        """Score a batch of completions, as trl calls a reward function.

        When trl passes `log_metric` (GRPO and RLOO do), the batch's label mass (mean and
        minimum) and entropy, share of truncated items, share of responses addressing the
        judge, the length-reward correlation inside groups (completions of the same prompt),
        the dropped count and the reward call's seconds go to trl's logs, under this
        function's name.

        Args:
            prompts: trl's prompts: strings or lists of chat messages.
            completions: trl's completions: strings, or conversational completions whose last
                assistant message is scored.
            **kwargs: What trl passes besides; `completion_ids` (lengths in tokens),
                `log_metric` and, under a rubric that takes reference answers, the
                `reference_column` are used, the rest ignored.

        Returns:
            One reward in [-1, 1] per completion, in order: the server's reward for it (the
            config's `reward_field`), or None for a sample dropped without reward under
            `on_failure="drop"`.

        Raises:
            RewardServerError: No valid reward within the deadline, with `on_failure="stop"`.
            TooManyDropped: With `on_failure="drop"`, more than `max_dropped_fraction` of the
                call's samples were dropped.
        """
        started = time.perf_counter()
        server_prompts = [prompt_for_server(p) for p in prompts]
        texts = [completion_text(c) for c in completions]
        references = await self._references(kwargs, len(texts))
        if self.on_failure == "drop":
            scored = await ascore_items_or_drop(self.client, server_prompts, texts, references=references)
            check_dropped(sum(i is None for i in scored), len(scored), self.max_dropped_fraction, "a reward call")
        else:
            scored = await self.client.score_items(server_prompts, texts, references=references)
        kept = [i for i, item in enumerate(scored) if item is not None]
        items = [scored[i] for i in kept]
        kept_rewards = rewards_of(items, self.config.reward_field)
        ids = kwargs.get("completion_ids")
        lengths = [len(ids[i]) if ids is not None else len(texts[i].split()) for i in kept]
        groups = [groups_by_key([json.dumps(p, sort_keys=True) for p in server_prompts])[i] for i in kept]
        corr = length_reward_corr(lengths, kept_rewards, groups)
        if self.length_control and kept:
            kept_rewards = length_controlled(kept_rewards, lengths, groups)
        rewards: list[float | None] = [None] * len(scored)
        for i, r in zip(kept, kept_rewards, strict=True):
            rewards[i] = r
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and items:
            extra = {"dropped": float(len(scored) - len(items)),
                     **({"length_reward_corr": corr} if corr is not None else {})}
            for name, value in {**batch_metrics(items, time.perf_counter() - started, self.disagreement_threshold), **extra}.items():
                log_metric(f"{self.__name__}/{name}", value)
        return rewards

    async def _references(self, columns: Mapping[str, Any], n: int) -> list[str | None] | None:
        """The completions' reference answers from the dataset column, when the rubric takes them."""
        if not await self.client.takes_reference():
            return None
        column = columns.get(self.reference_column)
        if column is None:
            raise ValueError(f"rubric {self.config.rubric or '(the server default)'!r} judges each completion against "
                             f"a reference answer, and trl passed no {self.reference_column!r} column: add one to the "
                             f"dataset, or name the column that holds them (reference_column=...)")
        if len(column) != n:
            raise ValueError(f"{len(column)} values in column {self.reference_column!r} for {n} completions")
        return [None if r is None else str(r) for r in column]

    @property
    def client(self) -> AsyncRewardClient:
        """The client, created on first use (trl calls us from its own loop thread)."""
        with self._lock:
            if self._client is None:
                self._client = AsyncRewardClient(self.config)
            return self._client

    def log_replica_stats(self) -> None:
        """Log each reward server's requests and failures so far (nothing before the first call)."""
        with self._lock:
            client = self._client
        if client is not None:
            client.log_replica_stats()

    async def aclose(self) -> None:
        """Log the servers' counts and close the HTTP client, if one was made. The function can be
        called again afterwards (with a new client and new counts)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.log_replica_stats()
            await client.aclose()

    def __getstate__(self) -> dict[str, Any]:
        # Connections and locks do not travel; the copy makes its own client when first called.
        return {"config": self.config, "__name__": self.__name__, "on_failure": self.on_failure,
                "max_dropped_fraction": self.max_dropped_fraction, "length_control": self.length_control,
                "disagreement_threshold": self.disagreement_threshold, "reference_column": self.reference_column}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["__name__"], state.get("on_failure", "stop"),
                      state.get("max_dropped_fraction", 0.1), state.get("length_control", False),
                      state.get("disagreement_threshold", 0.1), state.get("reference_column", "reference"))

    def __repr__(self) -> str:
        return f"<{self.__name__}: drlaif reward from {', '.join(self.config.urls)}>"


def make_reward_func(urls: str | list[str], rubric: str | None = None, *, name: str | None = None,
                     on_failure: str = "stop", max_dropped_fraction: float = 0.1, length_control: bool = False,
                     disagreement_threshold: float = 0.1, reference_column: str = "reference",
                     **client_kwargs: Any) -> DrlaifRewardFunc:
    """A trl reward function on a drlaif server, for `GRPOTrainer` and `RLOOTrainer`.

    Args:
        urls: One server URL, or several replicas (load- and health-aware routing, failover).
        rubric: The server rubric to score with; None: the server's default.
        name: The name trl logs it under; default `drlaif_<rubric>`, or `drlaif`.
        on_failure: `"stop"` or `"drop"`, as `drlaif-train --on-reward-failure`.
        max_dropped_fraction: As `drlaif-train --max-dropped-fraction`.
        length_control: As `drlaif-train --length-control`.
        disagreement_threshold: As `drlaif-train --disagreement-threshold`.
        reference_column: The dataset column of reference answers, for a rubric that judges
            against one (see the module doc).
        **client_kwargs: Any other [RewardClientConfig][drlaif.client.RewardClientConfig]
            field, such as `deadline_s=300`, `max_concurrency=8` or `reward_mode="direct"`
            (unset: group-pairwise when the rubric's `group_pairwise` says so, else direct).

    Returns:
        An async callable `(prompts, completions, **kwargs) -> list[float | None]`.

    Example:
        ```python
        from trl import GRPOConfig, GRPOTrainer
        from trainer.frameworks.trl_reward import make_reward_func

        reward = make_reward_func("http://127.0.0.1:8000", rubric="helpful", deadline_s=300)
        trainer = GRPOTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct", reward_funcs=reward,
                              args=GRPOConfig(output_dir="runs/grpo"), train_dataset=dataset)
        ```
    """
    config = RewardClientConfig(urls=[urls] if isinstance(urls, str) else list(urls), rubric=rubric,
                                **client_kwargs)
    return DrlaifRewardFunc(config, name or (f"drlaif_{rubric}" if rubric else "drlaif"), on_failure,
                            max_dropped_fraction, length_control, disagreement_threshold, reference_column)
