"""`drlaif-eval {alignment,winrate,harmless}` and `drlaif-label`: the RLAIF evaluations and AI
preference labels, from a running drlaif server.

Flags come from the dataclasses in evals/config.py; `--config FILE.yaml` supplies any of them
and flags override the file. Each evaluation prints a table and writes NAME.json, NAME.md,
NAME.png and NAME_items.jsonl to --output.
"""

from __future__ import annotations

import argparse
import logging
import sys

from drlaif.client import RewardServerError
from evals.config import AlignmentConfig, HarmlessConfig, LabelConfig, WinrateConfig
from trainer.config import build_parser, load_config

EVALUATIONS = {
    "alignment": (AlignmentConfig, "AI labeler alignment with human preference pairs (pairwise and direct)"),
    "winrate": (WinrateConfig, "win rate of policy A over policy B, judged pairwise"),
    "harmless": (HarmlessConfig, "harmless rate of a policy's responses"),
}
_FAILURES = (ValueError, TypeError, OSError, RewardServerError)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drlaif-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="evaluation", required=True)
    for name, (config_cls, help_text) in EVALUATIONS.items():
        build_parser(config_cls, sub.add_parser(name, help=help_text, description=config_cls.__doc__))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    _setup_logging()
    config_cls, _ = EVALUATIONS[args.evaluation]
    try:
        config = load_config(config_cls, args)
        if args.evaluation == "alignment":
            from evals.alignment import evaluate_alignment as run
        elif args.evaluation == "winrate":
            from evals.winrate import evaluate_winrate as run
        else:
            from evals.harmless import evaluate_harmless as run
        run(config)
    except _FAILURES as exc:
        sys.exit(f"drlaif-eval {args.evaluation}: {exc}")


def label_main(argv: list[str] | None = None) -> None:
    description = LabelConfig.__doc__ + " Writes JSONL that trl's DPOTrainer loads as is."
    parser = build_parser(LabelConfig, argparse.ArgumentParser(prog="drlaif-label", description=description))
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        from evals.label import label

        label(load_config(LabelConfig, args))
    except _FAILURES as exc:
        sys.exit(f"drlaif-label: {exc}")


if __name__ == "__main__":
    main()
