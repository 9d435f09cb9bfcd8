"""Reading evaluation inputs: human preference pairs, unlabelled pairs, response files, prompts.

Accepted line formats (JSON lines, optionally gzip-compressed):

- human pairs, drlaif/trl style: ``{"prompt": ..., "chosen": ..., "rejected": ...}``; the prompt
  is a string, an HH transcript or chat messages, and chosen/rejected are strings or trl's
  conversational ``[{"role": "assistant", "content": ...}]``;
- human pairs, HH-RLHF style: ``{"chosen": dialogue, "rejected": dialogue}``, two full
  "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues that differ only in the final assistant turn;
- unlabelled pairs (for ``drlaif-label``): ``{"prompt": ..., "response_a": ..., "response_b": ...}``,
  or any human-pair line (whose human label is then ignored);
- responses of a policy: ``{"prompt": ..., "response": ...}``.

Any of these lines may add ``"reference"``: the prompt's reference answer, sent to a rubric
that judges against one (a dataset of prompts gives it in its ``--reference-field``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from drlaif.prompt_text import parse_hh_transcript
from trainer.data.prompt_datasets import Prompt, hh_prompt, record_reference


@dataclass(frozen=True)
class Pair:
    """A prompt and two responses; for human pairs ``a`` is the chosen one and ``b`` the rejected.
    ``reference``: the prompt's reference answer, if the line gives one."""

    prompt: Prompt
    a: str
    b: str
    reference: str | None = None


class Responses(NamedTuple):
    """A response file: its prompts, responses and (None where a line has none) reference answers."""

    prompts: list[Prompt]
    responses: list[str]
    references: list[str | None]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; ``.gz`` files are decompressed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, record


def _prompt(value: object) -> Prompt:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"a prompt must be a string or a list of chat messages, got {value!r:.80}")


def _response(value: object) -> str:
    """A response string, or the text of trl's conversational [{"role": "assistant", ...}] form."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], Mapping) \
            and value[-1].get("role") == "assistant" and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise ValueError(f"a response must be a string or [{{'role': 'assistant', ...}}], got {value!r:.80}")


def split_hh_pair(chosen: str, rejected: str) -> Pair:
    """The shared HH-RLHF dialogue (up to its last "Assistant:") and the two final replies."""
    prompt = hh_prompt(chosen)
    if not rejected.startswith(prompt):
        raise ValueError("the chosen and rejected dialogues differ before their final assistant turn")
    return Pair(prompt, chosen[len(prompt):].strip(), rejected[len(prompt):].strip())


def pair_from_record(record: Mapping[str, Any]) -> Pair:
    """A pair from one line of any of the pair formats in the module docstring."""
    reference = record_reference(record, "reference")
    if "response_a" in record or "response_b" in record:
        return Pair(_prompt(record.get("prompt")), _response(record.get("response_a")),
                    _response(record.get("response_b")), reference)
    if "chosen" not in record or "rejected" not in record:
        raise ValueError(f"expected chosen/rejected or response_a/response_b fields, got {sorted(record)}")
    if "prompt" in record:
        return Pair(_prompt(record["prompt"]), _response(record["chosen"]), _response(record["rejected"]), reference)
    chosen, rejected = record["chosen"], record["rejected"]
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise ValueError("HH-RLHF lines need chosen and rejected dialogues as strings")
    pair = split_hh_pair(chosen, rejected)
    return Pair(pair.prompt, pair.a, pair.b, reference)


def load_pairs(path: str | Path, limit: int | None = None) -> list[Pair]:
    """The first ``limit`` pairs of a file (all when None), in file order; errors name the line."""
    pairs = []
    for lineno, record in read_jsonl(path):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            pairs.append(pair_from_record(record))
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    if not pairs:
        raise ValueError(f"{path} holds no pairs")
    return pairs


def load_responses(path: str | Path) -> Responses:
    """Prompts, responses and reference answers from a file of ``{"prompt", "response"}`` lines."""
    out = Responses([], [], [])
    for lineno, record in read_jsonl(path):
        try:
            out.prompts.append(_prompt(record.get("prompt")))
            out.responses.append(_response(record.get("response")))
            out.references.append(record_reference(record, "reference"))
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    if not out.prompts:
        raise ValueError(f"{path} holds no responses")
    return out


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: messages as they are, HH transcripts split, text as one user turn."""
    if isinstance(prompt, str):
        return parse_hh_transcript(prompt) or [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def load_eval_prompts(dataset: str | None, split: str = "train", prompt_field: str = "prompt",
                      default: str = "heldout", reference_field: str = "reference",
                      ) -> tuple[list[Prompt], dict[str, str]]:
    """Every prompt of a dataset file or hub id (None: the ``default`` split of drlaif's shipped
    set), and the reference answers of those that have one, by prompt."""
    from trainer.data.prompt_datasets import load_prompt_dataset
    from trainer.data.shipped_prompts import load_prompts

    if dataset is None:
        return list(load_prompts(default)), {}
    train, held_out, references = load_prompt_dataset(dataset, split, prompt_field, reference_field)
    return train + held_out, references
