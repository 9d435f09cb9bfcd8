"""Prompt datasets for training: the shipped set, local files, hub datasets, HH-RLHF.

A prompt is either a string or a list of chat messages; it is sent to the reward
server as is and rendered for the policy with its chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drlaif.prompt_text import parse_hh_transcript
from drlaif.protocol import Prompt
from trainer.data.shipped_prompts import load_prompts

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def hh_prompt(chosen: str) -> str:
    """The HH-RLHF prompt: the dialogue up to (and including) its last "Assistant:"."""
    cut = chosen.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("an HH-RLHF `chosen` dialogue has no '\\n\\nAssistant:' turn")
    return chosen[: cut + len("\n\nAssistant:")]


def to_prompt(record: dict[str, Any], prompt_field: str) -> Prompt:
    """One record's prompt: chat messages, an HH transcript (as messages), or plain text."""
    value = record.get(prompt_field)
    if value is None and "chosen" in record:
        value = hh_prompt(record["chosen"])
    if value is None:
        raise ValueError(f"record has no {prompt_field!r} field (fields: {sorted(record)})")
    if isinstance(value, list):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if not isinstance(value, str):
        raise ValueError(f"prompt must be a string or a list of messages, got {type(value).__name__}")
    messages = parse_hh_transcript(value)
    return messages if messages is not None else value


def load_prompt_dataset(dataset: str | None, split: str, prompt_field: str) -> tuple[list[Prompt], list[Prompt]]:
    """(train prompts, held-out prompts). Files and hub datasets hold out their last 10%."""
    if dataset is None:
        return list(load_prompts("train")), list(load_prompts("heldout"))
    path = Path(dataset)
    looks_local = path.suffix or dataset.startswith((".", "/", "~"))
    if looks_local and not path.exists():
        raise FileNotFoundError(f"dataset file {dataset} does not exist")
    import datasets

    if path.exists():
        if path.suffix not in _FORMATS:
            raise ValueError(f"unsupported dataset file {dataset}; use one of {sorted(_FORMATS)}")
        rows = datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
    else:
        rows = datasets.load_dataset(dataset, split=split)
    prompts = [to_prompt(dict(row), prompt_field) for row in rows]
    if len(prompts) < 2:
        raise ValueError(f"dataset {dataset} has {len(prompts)} prompts; need at least 2")
    held = max(1, len(prompts) // 10)
    return prompts[:-held], prompts[-held:]
