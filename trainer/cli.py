"""`drlaif-train {ppo,grpo,rloo}`: RL against a drlaif reward server.

Flags come from the config dataclasses in trainer/config.py (each documented there);
`--config run.yaml` supplies any of them from a file, and flags override the file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from trainer.config import PPOConfig, TRLConfig, build_parser, load_config

ALGORITHMS = {"ppo": PPOConfig, "grpo": TRLConfig, "rloo": TRLConfig}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drlaif-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="algorithm", required=True)
    helps = {"ppo": "PPO (drlaif's own: value model, reference, per-token KL, GAE)",
             "grpo": "GRPO through trl", "rloo": "RLOO through trl"}
    for name, config_cls in ALGORITHMS.items():
        build_parser(config_cls, sub.add_parser(name, help=helps[name]))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per reward request is noise
    try:
        config = load_config(ALGORITHMS[args.algorithm], args)
    except (ValueError, TypeError, OSError) as exc:
        sys.exit(f"drlaif-train: {exc}")

    from trainer.data.prompt_datasets import MissingReferences, load_prompt_dataset
    from trainer.ppo.distributed import WorldMismatch

    try:
        train_prompts, eval_prompts, references = load_prompt_dataset(
            config.dataset, config.dataset_split, config.prompt_field, config.reference_field)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"drlaif-train: {exc}")

    if args.algorithm == "ppo":
        from trainer.ppo.trainer import PPOTrainer, RewardUnavailable

        try:
            trainer = PPOTrainer(config, train_prompts, eval_prompts, references=references)
        except (WorldMismatch, MissingReferences) as exc:
            sys.exit(f"drlaif-train: {exc}")
        try:
            summary = trainer.train()
        except RewardUnavailable as exc:
            sys.exit(f"drlaif-train: the reward server is unavailable: {exc}")
        finally:
            trainer.close()
    else:
        from trainer.frameworks.trl_training import train_with_trl

        try:
            summary = train_with_trl(args.algorithm, config, train_prompts, eval_prompts, references)
        except (WorldMismatch, MissingReferences) as exc:
            sys.exit(f"drlaif-train: {exc}")
    if "before" in summary and "after" in summary:
        print(f"held-out reward: before {summary['before']['reward_mean']:+.4f} -> "
              f"after {summary['after']['reward_mean']:+.4f}")
    print(f"final policy: {summary['final_model']}; curves: {summary.get('plot')}")

if __name__ == "__main__":
    main()
