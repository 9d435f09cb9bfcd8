"""trainer/config.py through `drlaif-train`'s parser (trainer.cli.make_parser): defaults equal
the dataclasses', flags parse with the right types, a YAML --config file supplies values and
flags override it, unknown keys are refused, and every setting is documented."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from trainer.cli import ALGORITHMS, make_parser
from trainer.config import PPOConfig, TrainConfig, TRLConfig, load_config


def parse(*argv: str):
    args = make_parser().parse_args(list(argv))
    return load_config(ALGORITHMS[args.algorithm], args)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def subparser(name: str) -> argparse.ArgumentParser:
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


# --------------------------------------------------------------------------- defaults


def test_algorithms_map_to_their_configs():
    assert ALGORITHMS == {"ppo": PPOConfig, "grpo": TRLConfig, "rloo": TRLConfig}
    assert issubclass(PPOConfig, TrainConfig) and issubclass(TRLConfig, TrainConfig)


@pytest.mark.parametrize("algorithm, config_cls", [("ppo", PPOConfig), ("grpo", TRLConfig),
                                                   ("rloo", TRLConfig)])
def test_defaults_equal_the_dataclass_defaults(algorithm, config_cls):
    config = parse(algorithm)
    assert type(config) is config_cls
    assert config == config_cls()


def test_some_documented_defaults():
    ppo = PPOConfig()
    assert ppo.kl_coef == 0.2 and ppo.warmup_steps == 10 and ppo.target_kl == 4.0 and ppo.kl_horizon is None
    assert ppo.reward_url == ["http://127.0.0.1:8000"]
    # Mutable defaults are not shared between instances.
    ppo.reward_url.append("http://other")
    assert PPOConfig().reward_url == ["http://127.0.0.1:8000"]


def test_algorithm_is_required():
    with pytest.raises(SystemExit):
        make_parser().parse_args([])
    with pytest.raises(SystemExit):
        make_parser().parse_args(["sft"])


# --------------------------------------------------------------------------- flags and types


def test_flags_parse_with_the_right_types():
    config = parse("ppo", "--steps", "5", "--batch-size", "6", "--samples-per-prompt", "3", "--max-new-tokens", "16",
                   "--learning-rate", "3e-4", "--temperature", "1", "--kl-coef", "0.1",
                   "--seed", "7", "--rubric", "harmless", "--model", "some/model",
                   "--dataset", "prompts.jsonl", "--output-dir", "runs/x", "--resume", "auto",
                   "--prompt-field", "question")
    assert config.steps == 5 and type(config.steps) is int
    assert config.batch_size == 6 and config.samples_per_prompt == 3 and type(config.batch_size) is int
    assert config.max_new_tokens == 16
    assert config.learning_rate == 3e-4 and type(config.learning_rate) is float
    assert config.temperature == 1.0 and type(config.temperature) is float
    assert config.kl_coef == 0.1
    assert config.seed == 7
    assert (config.rubric, config.model, config.dataset) == ("harmless", "some/model", "prompts.jsonl")
    assert (config.output_dir, config.resume, config.prompt_field) == ("runs/x", "auto", "question")
    # Everything not given keeps its default.
    assert config.lam == PPOConfig().lam and config.ppo_epochs == PPOConfig().ppo_epochs


def test_optional_floats():
    config = parse("ppo", "--target-kl", "6", "--missing-eos-penalty", "-1.5")
    assert config.target_kl == 6.0 and type(config.target_kl) is float
    assert config.missing_eos_penalty == -1.5
    assert parse("ppo", "--target-kl", "0").target_kl == 0 and parse("ppo").missing_eos_penalty is None


def test_bad_numbers_are_rejected():
    for argv in (["ppo", "--steps", "abc"], ["ppo", "--steps", "2.5"],
                 ["ppo", "--learning-rate", "fast"], ["ppo", "--target-kl", "none"]):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_bool_flags_have_a_negative_form():
    assert PPOConfig().whiten_advantages is True and TrainConfig().tensorboard is False
    assert parse("ppo", "--no-whiten-advantages").whiten_advantages is False
    assert parse("ppo", "--whiten-advantages").whiten_advantages is True
    assert parse("ppo", "--tensorboard").tensorboard is True
    assert parse("grpo", "--no-tensorboard").tensorboard is False
    with pytest.raises(SystemExit):
        parse("ppo", "--tensorboard", "yes")


def test_literal_choices():
    assert parse("ppo", "--mixed-precision", "bf16").mixed_precision == "bf16"
    assert parse("ppo", "--lr-schedule", "cosine").lr_schedule == "cosine"
    with pytest.raises(SystemExit):
        parse("ppo", "--mixed-precision", "fp32")
    with pytest.raises(SystemExit):
        parse("ppo", "--lr-schedule", "exponential")


def test_reward_url_takes_several_urls():
    config = parse("ppo", "--reward-url", "http://a:8000", "http://b:8001", "--steps", "2")
    assert config.reward_url == ["http://a:8000", "http://b:8001"]
    assert config.steps == 2
    assert parse("rloo", "--reward-url", "http://only:1").reward_url == ["http://only:1"]
    with pytest.raises(SystemExit):
        parse("ppo", "--reward-url")


def test_algorithm_specific_flags():
    config = parse("grpo", "--num-generations", "8", "--beta", "0.0")
    assert (config.num_generations, config.beta) == (8, 0.0)
    with pytest.raises(SystemExit):  # a PPO setting is not a GRPO flag
        parse("grpo", "--ppo-epochs", "3")
    with pytest.raises(SystemExit):
        parse("ppo", "--num-generations", "8")


# --------------------------------------------------------------------------- YAML config file


def test_yaml_file_supplies_values(tmp_path):
    path = write_yaml(tmp_path, """
steps: 7
kl_coef: 0.3
target_kl: 3.0
whiten_advantages: false
mixed_precision: bf16
reward_url: [http://a:1, http://b:2]
rubric: honest
""")
    config = parse("ppo", "--config", str(path))
    assert config.steps == 7 and config.kl_coef == 0.3 and config.target_kl == 3.0
    assert config.whiten_advantages is False and config.mixed_precision == "bf16"
    assert config.reward_url == ["http://a:1", "http://b:2"] and config.rubric == "honest"
    assert config.batch_size == PPOConfig().batch_size  # untouched settings keep defaults


def test_flags_override_the_yaml_file(tmp_path):
    path = write_yaml(tmp_path, "steps: 7\nkl_coef: 0.3\nreward_url: http://file:1\ntensorboard: true\n")
    config = parse("ppo", "--steps", "3", "--config", str(path), "--no-tensorboard",
                   "--reward-url", "http://flag:2")
    assert config.steps == 3                 # flag wins
    assert config.kl_coef == 0.3             # from the file
    assert config.tensorboard is False       # flag wins over the file
    assert config.reward_url == ["http://flag:2"]


def test_yaml_single_reward_url_becomes_a_list(tmp_path):
    path = write_yaml(tmp_path, "reward_url: http://file:1\n")
    assert parse("grpo", "--config", str(path)).reward_url == ["http://file:1"]


def test_yaml_kebab_case_keys(tmp_path):
    path = write_yaml(tmp_path, "max-new-tokens: 16\nreward-url: http://k:1\nnum-generations: 2\n")
    config = parse("grpo", "--config", str(path))
    assert config.max_new_tokens == 16
    assert config.reward_url == ["http://k:1"]
    assert config.num_generations == 2


def test_yaml_unknown_key_raises_with_its_name(tmp_path):
    path = write_yaml(tmp_path, "steps: 3\nnot_a_setting: 1\n")
    with pytest.raises(ValueError, match="not_a_setting"):
        parse("ppo", "--config", str(path))
    # A PPO-only setting is unknown to GRPO.
    path = write_yaml(tmp_path, "ppo-epochs: 3\n")
    with pytest.raises(ValueError, match="ppo-epochs"):
        parse("grpo", "--config", str(path))


def test_yaml_must_be_a_mapping(tmp_path):
    path = write_yaml(tmp_path, "- steps\n- 3\n")
    with pytest.raises(ValueError, match="mapping"):
        parse("ppo", "--config", str(path))


def test_empty_yaml_gives_defaults(tmp_path):
    path = write_yaml(tmp_path, "")
    assert parse("ppo", "--config", str(path)) == PPOConfig()


def test_missing_yaml_file_raises_oserror(tmp_path):
    # cli.main turns OSError into a clean exit message.
    with pytest.raises(OSError):
        parse("ppo", "--config", str(tmp_path / "nope.yaml"))


def test_yaml_scientific_notation_learning_rate_is_a_float(tmp_path):
    path = write_yaml(tmp_path, "learning_rate: 1e-5\n")
    config = parse("ppo", "--config", str(path))
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)


# --------------------------------------------------------------------------- documentation


@pytest.mark.parametrize("config_cls", [TrainConfig, PPOConfig, TRLConfig])
def test_every_field_has_help(config_cls):
    for f in dataclasses.fields(config_cls):
        assert f.metadata.get("help", "").strip(), f"{config_cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_every_flag_shows_its_help_and_default(algorithm):
    sub = subparser(algorithm)
    by_dest = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(ALGORITHMS[algorithm]):
        action = by_dest[f.name]
        assert "--" + f.name.replace("_", "-") in action.option_strings
        assert action.help.startswith(f.metadata["help"])
        assert "(default: " in action.help
    assert by_dest["config"].help
    text = sub.format_help()  # renders without error (e.g. no stray % in help texts)
    for f in dataclasses.fields(ALGORITHMS[algorithm]):
        assert "--" + f.name.replace("_", "-") in text


def test_batch_size_counts_rollouts_as_its_help_says():
    from types import SimpleNamespace

    from trainer.ppo.trainer import PPOTrainer

    # PPO's batch of a step: one entry per rollout, samples_per_prompt of them per prompt.
    config = PPOConfig(batch_size=6, samples_per_prompt=3)
    trainer = SimpleNamespace(config=config, train_prompts=[f"prompt {i}" for i in range(10)],
                              accelerator=SimpleNamespace(num_processes=1, process_index=0))
    batch = PPOTrainer.batch_prompts(trainer, 0)
    assert len(batch) == 6 and len(set(batch)) == 2
    for algorithm in ALGORITHMS:
        action = next(a for a in subparser(algorithm)._actions if a.dest == "batch_size")
        assert action.help.startswith("Rollouts (sampled responses) per update, per process"), algorithm


def test_yaml_values_are_checked_against_field_types(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision"):
        parse("ppo", "--config", str(write_yaml(tmp_path, "mixed_precision: fp32\n")))
    with pytest.raises(ValueError, match="steps"):
        parse("ppo", "--config", str(write_yaml(tmp_path, "steps: 2.5\n")))
    assert parse("ppo", "--config", str(write_yaml(tmp_path, "steps: '7'\n"))).steps == 7


def test_ppo_groups_must_fit_the_batch():
    from trainer.config import PPOConfig

    with pytest.raises(ValueError, match="multiple of samples_per_prompt"):
        PPOConfig(batch_size=6, samples_per_prompt=4)
    with pytest.raises(ValueError, match="needs samples_per_prompt >= 2"):
        PPOConfig(samples_per_prompt=1)
    assert PPOConfig(samples_per_prompt=1, advantage_estimator="gae").samples_per_prompt == 1


def test_reward_field_flag_is_checked():
    assert parse("ppo", "--reward-field", "reward_robust").reward_field == "reward_robust"
    assert parse("grpo", "--reward-field", "reward_as_written").reward_field == "reward_as_written"
    assert PPOConfig().reward_field == "reward" and TRLConfig().reward_field == "reward"
    with pytest.raises(SystemExit):
        parse("ppo", "--reward-field", "score")
    with pytest.raises(ValueError, match="disagreement_threshold"):
        PPOConfig(disagreement_threshold=-0.1)
