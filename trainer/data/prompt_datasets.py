"""Prompt datasets for training: the shipped set, local files, hub datasets, HH-RLHF.

A prompt is either a string or a list of chat messages; it is sent to the reward
server as is and rendered for the policy with its chat template. A record may also hold
the prompt's reference answer (``--reference-field``), which reaches the rubrics that
judge against one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from drlaif.prompt_text import parse_hh_transcript, same_prompt_key
from drlaif.protocol import Prompt
from trainer.data.shipped_prompts import load_prompts

#: Reference answers by prompt (its drlaif.prompt_text.same_prompt_key).
References = Mapping[str, str]


class MissingReferences(ValueError):
    """The rubric judges against reference answers, and some prompts have none."""


class PromptDataset(NamedTuple):
    """A dataset's training prompts, held-out prompts, and the reference answers it has."""

    train: list[Prompt]
    heldout: list[Prompt]
    references: dict[str, str]

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


def load_prompt_dataset(dataset: str | None, split: str, prompt_field: str,
                        reference_field: str = "reference") -> PromptDataset:
    """Train prompts, held-out prompts and reference answers (from records whose
    ``reference_field`` is set). Files and hub datasets hold out their last 10%."""
    if dataset is None:
        return PromptDataset(list(load_prompts("train")), list(load_prompts("heldout")), {})
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
    records = [dict(row) for row in rows]
    prompts = [to_prompt(record, prompt_field) for record in records]
    if len(prompts) < 2:
        raise ValueError(f"dataset {dataset} has {len(prompts)} prompts; need at least 2")
    held = max(1, len(prompts) // 10)
    return PromptDataset(prompts[:-held], prompts[-held:], collect_references(prompts, records, reference_field))


def record_reference(record: Mapping[str, Any], field: str) -> str | None:
    """A record's reference answer in ``field`` (a number as its text); None when it has none
    (missing or empty)."""
    value = record.get(field)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def collect_references(prompts: Sequence[Prompt], records: Sequence[Mapping[str, Any]],
                       reference_field: str) -> dict[str, str]:
    """The reference answer of each prompt whose record has one (a number as its text); a
    ValueError when one prompt appears with two different references."""
    out: dict[str, str] = {}
    for prompt, record in zip(prompts, records, strict=True):
        text = record_reference(record, reference_field)
        if text is None:
            continue
        key = same_prompt_key(prompt)
        if out.setdefault(key, text) != text:
            raise ValueError(f"the prompt {key[:60]!r} appears with two different {reference_field!r} values; a "
                             "prompt's reference answer must be one")
    return out


def needs_references(takes_reference: Callable[[str | None], bool], rubric: str | None,
                     prompts: Sequence[Prompt], references: References, reference_field: str) -> bool:
    """Whether ``rubric`` judges against reference answers (``takes_reference``, a reward
    client's); if it does, every prompt must have one (MissingReferences naming how many lack it)."""
    if not takes_reference(rubric):
        return False
    missing = [p for p in prompts if same_prompt_key(p) not in references]
    if missing:
        raise MissingReferences(f"rubric {rubric or '(the server default)'!r} judges each response against a reference "
                         f"answer, and {len(missing)} of {len(prompts)} prompts have no {reference_field!r} field "
                         f"(the first: {same_prompt_key(missing[0])[:60]!r}); give each record one, or use "
                         "a rubric without {reference}")
    return True


def reference_list(prompts: Sequence[Prompt], references: References, needed: bool) -> list[str | None] | None:
    """The reference answer of each prompt where the rubric takes them (``needed``), else None."""
    return [references.get(same_prompt_key(p)) for p in prompts] if needed else None
