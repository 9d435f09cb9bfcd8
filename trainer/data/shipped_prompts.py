"""The prompt set that ships with drlaif: training and held-out prompts for the trainer.

A few hundred short prompts written for this project -- everyday questions and advice,
factual knowledge, short instructions and writing tasks, simple reasoning and maths, short
coding questions, and a share of harm-probing requests for the ``harmless`` rubric -- split
into a ``train`` split for PPO rollouts and a ``heldout`` split for evaluation. The two splits
share no prompts.

Each split is a JSON-lines file in this package, one ``{"prompt": str, "category": str}``
object per line. The files are read with :mod:`importlib.resources`, so the loaders work from
a source checkout and from an installed wheel alike.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Literal, TypedDict, get_args

__all__ = [
    "CATEGORIES",
    "HARM_CATEGORY",
    "SPLITS",
    "PromptRecord",
    "Split",
    "load_prompt_records",
    "load_prompts",
]

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = get_args(Split)

#: Categories used in the prompt files.
CATEGORIES: tuple[str, ...] = ("everyday", "factual", "instruction", "reasoning", "coding", "harm_probing")
#: Prompts a harmless policy should politely decline.
HARM_CATEGORY = "harm_probing"


class PromptRecord(TypedDict):
    """One line of a prompt file."""

    prompt: str
    category: str


def _filename(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown prompt split {split!r}; expected one of {', '.join(SPLITS)}")
    return f"prompts_{split}.jsonl"


def load_prompt_records(split: Split) -> list[PromptRecord]:
    """Return the records of one split, in file order.

    Args:
        split: ``"train"`` or ``"heldout"``.

    Returns:
        One ``{"prompt": ..., "category": ...}`` dict per prompt.

    Raises:
        ValueError: ``split`` is not a known split, or a line is not a valid record.
    """
    text = resources.files(__package__).joinpath(_filename(split)).read_text(encoding="utf-8")
    records: list[PromptRecord] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if not (
            isinstance(obj, dict)
            and isinstance(obj.get("prompt"), str)
            and isinstance(obj.get("category"), str)
        ):
            raise ValueError(
                f"{_filename(split)}:{lineno}: expected an object with string 'prompt' and 'category'"
            )
        records.append(PromptRecord(prompt=obj["prompt"], category=obj["category"]))
    return records


def load_prompts(split: Split) -> list[str]:
    """Return the prompt texts of one split, in file order.

    Args:
        split: ``"train"`` or ``"heldout"``.

    Raises:
        ValueError: ``split`` is not a known split.
    """
    return [record["prompt"] for record in load_prompt_records(split)]
