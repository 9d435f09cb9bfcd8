"""The evaluations' files: the pair and response files drlaif-eval reads (evals/data.py) and the
preference records drlaif-label writes (evals/label.py)."""

from __future__ import annotations

import gzip
import json

import pytest

from evals.data import as_messages, load_pairs, load_responses, pair_from_record, split_hh_pair
from evals.label import preference_record


def test_hh_dialogues_split_into_prompt_and_final_replies():
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a secret.\n\nAssistant:"
    pair = split_hh_pair(prompt + " No.", prompt + " Fine, here it is.")
    assert (pair.prompt, pair.a, pair.b) == (prompt, "No.", "Fine, here it is.")
    with pytest.raises(ValueError, match="differ before"):
        split_hh_pair(prompt + " No.", "\n\nHuman: Something else\n\nAssistant: Yes.")
    assert as_messages(pair.prompt) == [{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hello!"},
                                        {"role": "user", "content": "Tell me a secret."}]


def test_pair_formats():
    conversational = {"prompt": [{"role": "user", "content": "Q?"}],
                      "chosen": [{"role": "assistant", "content": "good"}],
                      "rejected": [{"role": "assistant", "content": "bad"}]}
    pair = pair_from_record(conversational)
    assert (pair.prompt, pair.a, pair.b) == ([{"role": "user", "content": "Q?"}], "good", "bad")
    pair = pair_from_record({"prompt": "Q?", "response_a": "x", "response_b": "y"})
    assert (pair.prompt, pair.a, pair.b) == ("Q?", "x", "y")
    with pytest.raises(ValueError, match="expected chosen/rejected"):
        pair_from_record({"prompt": "Q?", "chosen": "x"})
    with pytest.raises(ValueError, match="a prompt must be"):
        pair_from_record({"prompt": 3, "chosen": "x", "rejected": "y"})


def test_load_pairs_reads_gzip_limits_and_names_bad_lines(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(5):
            f.write(json.dumps({"prompt": f"q{i}", "chosen": "c", "rejected": "r"}) + "\n\n")
    assert [p.prompt for p in load_pairs(path, limit=3)] == ["q0", "q1", "q2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "c", "rejected": "r"}\n{"prompt": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected chosen/rejected"):
        load_pairs(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no pairs"):
        load_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "missing.jsonl")


def test_load_responses(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + json.dumps({"prompt": "q2"}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:2: a response must be"):
        load_responses(path)


def test_preference_record_puts_the_preferred_response_first():
    pair = pair_from_record({"prompt": "Q?", "response_a": "x", "response_b": "y"})
    assert preference_record(pair, 0.3, "standard") == {"prompt": "Q?", "chosen": "y", "rejected": "x",
                                                        "p_chosen": 0.7}
    record = preference_record(pair, 0.8, "conversational")
    assert record["prompt"] == [{"role": "user", "content": "Q?"}]
    assert record["chosen"] == [{"role": "assistant", "content": "x"}] and record["p_chosen"] == 0.8
    messages = pair_from_record({"prompt": [{"role": "user", "content": "Q?"}],
                                 "response_a": "x", "response_b": "y"})
    with pytest.raises(ValueError, match="needs string prompts"):
        preference_record(messages, 0.8, "standard")
