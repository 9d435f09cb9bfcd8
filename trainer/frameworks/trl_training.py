"""GRPO and RLOO through trl, with the drlaif server as the reward function."""

from __future__ import annotations

import logging
from pathlib import Path

from drlaif.client import RewardClient, RewardClientConfig
from drlaif.prompt_text import same_prompt_key
from trainer.analysis.metrics_log import MetricsLog
from trainer.config import TRLConfig
from trainer.data.prompt_datasets import Prompt, References, needs_references
from trainer.frameworks.trl_heldout import HeldOutCallback
from trainer.frameworks.trl_reward import DrlaifRewardFunc, make_reward_func
from trainer.ppo.distributed import check_world, cpu_world_needed
from trainer.ppo.models import load_tokenizer, policy_prompt, resolve_policy

log = logging.getLogger(__name__)
# The dataset column trl passes to the reward function with each prompt's reference answer.
REFERENCE_COLUMN = "reference"


def _trl_trainers() -> tuple[type, type, type, type]:
    """trl's GRPOConfig, GRPOTrainer, RLOOConfig and RLOOTrainer, imported without vLLM.

    trl imports vLLM whenever it is installed (3.7 s of a 2-core CPU at every start, as on a
    machine whose labeler runs on vLLM), for its own vLLM generation, which drlaif's trl runs
    never turn on: they generate with the policy itself. trl is told that vLLM is absent
    before its trainers are imported."""
    import importlib

    importlib.import_module("trl.import_utils").is_vllm_available = lambda min_version=None: False
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    return GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer


def build_trl_trainer(algorithm: str, config: TRLConfig, train_prompts: list[Prompt], heldout: HeldOutCallback,
                      references: References | None = None):
    """trl's GRPOTrainer or RLOOTrainer, set up with drlaif's reward function and prompts, and
    ``heldout`` (metrics.jsonl, evaluation, monitors, alarm, report) attached. The prompts'
    ``references`` become the dataset's reference column, which trl passes to the reward
    function (and that sends to a rubric that judges against one)."""
    import datasets

    GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer = _trl_trainers()
    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[algorithm]
    output_dir = Path(config.output_dir)
    if config.batch_size % config.num_generations:
        raise ValueError(f"--batch-size ({config.batch_size}) must be a multiple of "
                         f"--num-generations ({config.num_generations}): each prompt is sampled that often")
    args = config_cls(
        output_dir=str(output_dir),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        beta=config.beta,
        seed=config.seed,
        logging_steps=1,
        save_steps=config.save_every or config.steps,
        report_to=["tensorboard"] if config.tensorboard else [],
        bf16=config.mixed_precision == "bf16",
        fp16=config.mixed_precision == "fp16",
        use_cpu=cpu_world_needed(),
    )
    model = resolve_policy(config.model)
    # The same rendering as PPO's: trl applies the chat template only to message lists, so a
    # plain string prompt would reach the policy untemplated (and it would end at once).
    tokenizer = load_tokenizer(model)
    columns = {"prompt": [policy_prompt(tokenizer, p) for p in train_prompts]}
    if references:
        columns[REFERENCE_COLUMN] = [references.get(same_prompt_key(p)) for p in train_prompts]
    dataset = datasets.Dataset.from_dict(columns)
    peft_config = None
    if config.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    reward = make_reward_func(config.reward_url, config.rubric, read_timeout_s=config.reward_timeout_s,
                              deadline_s=config.reward_deadline_s, reward_field=config.reward_field,
                              reward_mode=config.reward_mode, group_opponents=config.group_opponents,
                              on_failure=config.on_reward_failure, max_dropped_fraction=config.max_dropped_fraction,
                              length_control=config.length_control,
                              disagreement_threshold=config.disagreement_threshold,
                              reference_column=REFERENCE_COLUMN)
    trainer = trainer_cls(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                          peft_config=peft_config, callbacks=[heldout])
    check_world(trainer.accelerator.num_processes)
    heldout.attach(trainer)
    return trainer


def train_with_trl(algorithm: str, config: TRLConfig, train_prompts: list[Prompt],
                   eval_prompts: list[Prompt], references: References | None = None) -> dict:
    """Run trl's GRPOTrainer or RLOOTrainer for ``config.steps`` updates, with held-out evaluation
    on ``eval_prompts`` as PPO has it; returns the run's summary (as summary.json). ``references``:
    the prompts' reference answers (MissingReferences when the rubric judges against them and a
    training prompt has none)."""
    output_dir = Path(config.output_dir)
    metrics = MetricsLog(output_dir, enabled=True)
    heldout = HeldOutCallback(config, eval_prompts, metrics, load_tokenizer(resolve_policy(config.model)), references)
    heldout.summary["final_model"] = str(output_dir / "final")
    try:
        check = RewardClient(RewardClientConfig(urls=list(config.reward_url), rubric=config.rubric,
                                                deadline_s=config.reward_deadline_s))
        try:
            needs_references(check.takes_reference, config.rubric, train_prompts, references or {},
                             config.reference_field)
        finally:
            check.close()
        trainer = build_trl_trainer(algorithm, config, train_prompts, heldout, references)
        # One writer: every process evaluates (and logs) the same numbers. The world is known only
        # now that trl has set up accelerate.
        metrics.enabled = trainer.is_world_process_zero()
        resume = None
        if config.resume == "auto":
            resume = True if any(output_dir.glob("checkpoint-*")) else None
        elif config.resume:
            resume = config.resume
        try:
            trainer.train(resume_from_checkpoint=resume)
        finally:
            for func in trainer.reward_funcs:
                if isinstance(func, DrlaifRewardFunc):
                    func.log_replica_stats()
        trainer.save_model(heldout.summary["final_model"])
    finally:
        heldout.close()
    return heldout.summary
