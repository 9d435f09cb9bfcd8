"""trainer/data/prompt_datasets.py: HH-RLHF prompts, record -> prompt conversion (plain text, chat messages,
HH transcripts, `chosen`-only records), and load_prompt_dataset on the shipped set and on local
JSONL/JSON/CSV/Parquet files (held-out = last 10%, at least 1). No network."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from trainer.data.prompt_datasets import hh_prompt, load_prompt_dataset, to_prompt
from trainer.data.shipped_prompts import load_prompts

MULTI_TURN = ("\n\nHuman: What is the capital of France?"
              "\n\nAssistant: Paris."
              "\n\nHuman: And of Italy?"
              "\n\nAssistant: Rome, since 1871.")


@pytest.fixture(autouse=True)
def _offline_datasets(tmp_path, monkeypatch):
    """Keep `datasets` off the network and its cache inside tmp_path."""
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache", raising=False)


# --------------------------------------------------------------------------- hh_prompt


def test_hh_prompt_cuts_after_the_last_assistant_turn():
    prompt = hh_prompt(MULTI_TURN)
    assert prompt == ("\n\nHuman: What is the capital of France?"
                      "\n\nAssistant: Paris."
                      "\n\nHuman: And of Italy?"
                      "\n\nAssistant:")
    assert "Rome" not in prompt


def test_hh_prompt_single_turn():
    assert hh_prompt("\n\nHuman: Hi\n\nAssistant: Hello!") == "\n\nHuman: Hi\n\nAssistant:"


@pytest.mark.parametrize("text", ["just some text", "\n\nHuman: no answer yet", "Assistant: no blank lines"])
def test_hh_prompt_without_an_assistant_turn_raises(text):
    with pytest.raises(ValueError, match="Assistant"):
        hh_prompt(text)


# --------------------------------------------------------------------------- to_prompt


def test_plain_string():
    assert to_prompt({"prompt": "Write a haiku about rain."}, "prompt") == "Write a haiku about rain."


def test_custom_prompt_field():
    assert to_prompt({"question": "Why is the sky blue?", "prompt": "other"}, "question") == \
        "Why is the sky blue?"


def test_chat_messages_keep_only_role_and_content():
    record = {"prompt": [{"role": "system", "content": "Be brief.", "name": "x"},
                         {"role": "user", "content": "Hi!"}]}
    assert to_prompt(record, "prompt") == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi!"}]


def test_hh_transcript_string_becomes_messages():
    assert to_prompt({"prompt": "\n\nHuman: Hi there\n\nAssistant:"}, "prompt") == \
        [{"role": "user", "content": "Hi there"}]
    assert to_prompt({"prompt": hh_prompt(MULTI_TURN)}, "prompt") == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]


def test_record_with_only_chosen_is_hh_rlhf():
    record = {"chosen": MULTI_TURN, "rejected": MULTI_TURN.replace("Rome", "Milan")}
    assert to_prompt(record, "prompt") == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]


def test_missing_field_raises_and_names_it():
    with pytest.raises(ValueError, match="'prompt'") as exc:
        to_prompt({"text": "hello", "id": 3}, "prompt")
    assert "text" in str(exc.value)  # lists the fields that are there


def test_non_text_prompt_raises():
    with pytest.raises(ValueError, match="string or a list of messages"):
        to_prompt({"prompt": 42}, "prompt")


# --------------------------------------------------------------------------- load_prompt_dataset


def test_shipped_prompt_set():
    train, heldout, _ = load_prompt_dataset(None, "train", "prompt")
    assert train and heldout
    assert train == load_prompts("train") and heldout == load_prompts("heldout")
    assert all(isinstance(p, str) and p.strip() for p in train + heldout)


def _texts(n: int) -> list[str]:
    return [f"Prompt number {i}: tell me something about {i}." for i in range(n)]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_holds_out_the_last_ten_percent(tmp_path):
    texts = _texts(20)
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": t, "id": i} for i, t in enumerate(texts)])
    train, heldout, _ = load_prompt_dataset(str(path), "train", "prompt")
    assert train == texts[:18] and heldout == texts[18:]


def test_small_file_holds_out_at_least_one(tmp_path):
    texts = _texts(5)
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": t} for t in texts])
    train, heldout, _ = load_prompt_dataset(str(path), "train", "prompt")
    assert train == texts[:4] and heldout == texts[4:]


def test_a_single_prompt_is_not_enough(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "only one"}])
    with pytest.raises(ValueError, match="at least 2"):
        load_prompt_dataset(str(path), "train", "prompt")


def test_json_file(tmp_path):
    texts = _texts(10)
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"instruction": t} for t in texts]))
    train, heldout, _ = load_prompt_dataset(str(path), "train", "instruction")
    assert train == texts[:9] and heldout == texts[9:]


def test_csv_file(tmp_path):
    texts = _texts(12)
    path = tmp_path / "p.csv"
    pd.DataFrame({"question": texts, "source": ["x"] * 12}).to_csv(path, index=False)
    train, heldout, _ = load_prompt_dataset(str(path), "train", "question")
    assert train == texts[:11] and heldout == texts[11:]


def test_parquet_file(tmp_path):
    texts = _texts(30)
    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": texts}).to_parquet(path, index=False)
    train, heldout, _ = load_prompt_dataset(str(path), "train", "prompt")
    assert train == texts[:27] and heldout == texts[27:]


def test_chat_messages_jsonl(tmp_path):
    records = [{"prompt": [{"role": "system", "content": "Be kind."},
                           {"role": "user", "content": f"Question {i}?"}]} for i in range(10)]
    path = _write_jsonl(tmp_path / "chat.jsonl", records)
    train, heldout, _ = load_prompt_dataset(str(path), "train", "prompt")
    assert len(train) == 9 and len(heldout) == 1
    assert train[0] == [{"role": "system", "content": "Be kind."},
                        {"role": "user", "content": "Question 0?"}]
    assert heldout[0][-1] == {"role": "user", "content": "Question 9?"}


def test_hh_rlhf_style_jsonl(tmp_path):
    records = [{"chosen": f"\n\nHuman: Q{i}\n\nAssistant: good {i}",
                "rejected": f"\n\nHuman: Q{i}\n\nAssistant: bad {i}"} for i in range(4)]
    path = _write_jsonl(tmp_path / "hh.jsonl", records)
    train, heldout, _ = load_prompt_dataset(str(path), "train", "prompt")
    assert train == [[{"role": "user", "content": f"Q{i}"}] for i in range(3)]
    assert heldout == [[{"role": "user", "content": "Q3"}]]


def test_missing_prompt_field_in_a_file(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in _texts(3)])
    with pytest.raises(ValueError, match="'prompt'"):
        load_prompt_dataset(str(path), "train", "prompt")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_nonexistent_file(tmp_path, suffix):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_dataset(str(tmp_path / f"missing{suffix}"), "train", "prompt")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("one\ntwo\nthree\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_prompt_dataset(str(path), "train", "prompt")
