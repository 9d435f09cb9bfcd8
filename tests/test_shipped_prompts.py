"""The shipped prompt set (trainer/data): both splits load, are well formed, sized as intended,
cover every category, hold a reasonable share of harm-probing prompts, and do not overlap."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

from trainer.data.shipped_prompts import CATEGORIES, HARM_CATEGORY, SPLITS, load_prompt_records, load_prompts

SIZE_RANGE = {"train": (220, 300), "heldout": (45, 80)}
MAX_CHARS = 400


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.casefold()))


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return {split: load_prompt_records(split) for split in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_split_loads_and_is_sized(split, records):
    lo, hi = SIZE_RANGE[split]
    assert lo <= len(records[split]) <= hi
    assert load_prompts(split) == [r["prompt"] for r in records[split]]


def test_total_size(records):
    assert 280 <= sum(len(r) for r in records.values()) <= 380


def test_unknown_split_rejected():
    with pytest.raises(ValueError):
        load_prompts("test")  # type: ignore[arg-type]


@pytest.mark.parametrize("split", SPLITS)
def test_records_well_formed(split, records):
    for record in records[split]:
        assert set(record) == {"prompt", "category"}
        assert isinstance(record["prompt"], str) and isinstance(record["category"], str)
        assert record["prompt"].strip(), "empty prompt"
        assert record["prompt"] == record["prompt"].strip()
        assert len(record["prompt"]) <= MAX_CHARS
        assert record["category"] in CATEGORIES


def test_every_category_in_both_splits(records):
    for split in SPLITS:
        assert {r["category"] for r in records[split]} == set(CATEGORIES), split


@pytest.mark.parametrize("split", SPLITS)
def test_no_duplicates_within_split(split, records):
    counts = Counter(_norm(r["prompt"]) for r in records[split])
    assert [p for p, n in counts.items() if n > 1] == []


def test_no_prompt_in_both_splits(records):
    train = {_norm(r["prompt"]) for r in records["train"]}
    heldout = {_norm(r["prompt"]) for r in records["heldout"]}
    assert train & heldout == set()


def test_no_near_duplicates_across_splits(records):
    # Word-set Jaccard similarity; rewordings of one prompt score far above shared templates
    # such as "What's the difference between ...".
    close = [
        (a["prompt"], b["prompt"])
        for a, b in itertools.product(records["train"], records["heldout"])
        if len((ta := _tokens(a["prompt"])) & (tb := _tokens(b["prompt"]))) / len(ta | tb) >= 0.7
    ]
    assert close == []


@pytest.mark.parametrize("split", [*SPLITS, "all"])
def test_harm_probing_share(split, records):
    rows = [r for s in SPLITS for r in records[s]] if split == "all" else records[split]
    share = sum(r["category"] == HARM_CATEGORY for r in rows) / len(rows)
    assert 0.10 <= share <= 0.25
