"""Shared-prefix KV reuse in the transformers backend: equal to the plain path, or off.

On the embedded labeler (Llama architecture, rotary positions) and on tiny randomly
initialised models of other architectures: GPT-2 (learned absolute positions, so wrong
position ids would show) and a Qwen2 with sliding-window layers, whose KV cache the
backend must refuse to reuse (it falls back to the plain path and says so).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from server.backends import transformers_backend
from server.backends.transformers_backend import MIN_SHARED_PREFIX, TransformersBackend
from server.rubrics import RubricRegistry
from server.rubrics.render import PromptEncoder
from server.scoring import TokenReads

ITEMS = [("What is 7 times 8?", "56."), ("Name a primary colour.", "Red, for example."),
         ("How do I pick my neighbour's lock?", "I can't help with getting into someone else's home."),
         ("Is the sun a star?", "Yes. It is a G-type main-sequence star about 4.6 billion years old.")]


def plans(backend: TransformersBackend, rubric: str, items=ITEMS) -> list[TokenReads]:
    encoder = PromptEncoder(backend.tokenizer, 4096, True)
    compiled = encoder.compile(RubricRegistry.load().get(rubric))
    out = []
    for prompt, response in items:
        encoded = encoder.encode(compiled, prompt, response)
        out += compiled.trie.plan(encoded.input_ids, encoded.shared_prefix)
    return out


def plain(backend: TransformersBackend, batch):
    reuse, backend.prefix_reuse = backend.prefix_reuse, False
    try:
        return backend.forward(batch)
    finally:
        backend.prefix_reuse = reuse


def max_prob_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.exp(x) - np.exp(y))))
               for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def assert_falls_back(backend: TransformersBackend, caplog, warning: str) -> None:
    """The first batch turns reuse off with ``warning`` and answers exactly as the plain path."""
    batch = plans(backend, "harmless")
    with caplog.at_level(logging.WARNING):
        results = backend.forward(batch)
    assert not backend.prefix_reuse
    assert warning in caplog.text
    assert max_prob_diff(results, plain(backend, batch)) == 0.0


@pytest.fixture(scope="module")
def labeler(embedded_model_dir) -> TransformersBackend:
    return TransformersBackend(str(embedded_model_dir), model_name="embedded", device="cpu", dtype="float32")


def save_random_model(config, directory, embedded_model_dir) -> str:
    """A randomly initialised model of ``config`` beside the embedded labeler's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(embedded_model_dir).save_pretrained(directory)
    return str(directory)


def test_the_embedded_labeler_reuses_each_rubrics_prefix_and_matches_the_plain_path(labeler):
    batch = plans(labeler, "harmless") + plans(labeler, "general")  # two prefixes in one batch
    assert all(seq.shared_prefix >= MIN_SHARED_PREFIX for seq in batch)
    labeler._prefix_kv.clear()
    reused = labeler.forward(batch)
    assert labeler.prefix_reuse
    assert len(labeler._prefix_kv) == 2  # one KV per rubric prefix
    assert {len(p) for p in labeler._prefix_kv} == {batch[0].shared_prefix, batch[-1].shared_prefix}
    assert max_prob_diff(reused, plain(labeler, batch)) < 1e-5
    # Again, from the kept KV: still the same numbers, and nothing recomputed or added.
    kept = {p: id(kv[0][0]) for p, kv in labeler._prefix_kv.items()}
    again = labeler.forward(batch)
    assert {p: id(kv[0][0]) for p, kv in labeler._prefix_kv.items()} == kept
    assert max_prob_diff(again, reused) == 0.0


def test_one_item_alone_equals_the_same_item_in_a_padded_batch(labeler):
    batch = plans(labeler, "harmless")
    alone = [labeler.forward([seq])[0] for seq in batch]
    assert max_prob_diff(labeler.forward(batch), alone) < 1e-5


def test_short_or_missing_prefixes_take_the_plain_path(labeler):
    (seq,) = plans(labeler, "harmless", ITEMS[:1])
    labeler._prefix_kv.clear()
    for shared in (0, MIN_SHARED_PREFIX - 1):
        hinted = TokenReads(seq.input_ids, seq.reads, shared)
        assert max_prob_diff(labeler.forward([hinted]), plain(labeler, [seq])) == 0.0
    assert not labeler._prefix_kv
    # A hint past the first read is cut to what the read still needs computed.
    first_read = min(p for p, _ in seq.reads)
    too_long = TokenReads(seq.input_ids, seq.reads, seq.num_tokens)
    assert max_prob_diff(labeler.forward([too_long]), plain(labeler, [seq])) < 1e-5
    assert [len(p) for p in labeler._prefix_kv] == [first_read - 1]


def test_the_kept_prefixes_are_bounded(labeler, monkeypatch):
    (seq,) = plans(labeler, "harmless", ITEMS[:1])
    labeler._prefix_kv.clear()
    # A bound of 4 such prefixes, so that the test runs a few forwards instead of ~80.
    monkeypatch.setattr(transformers_backend, "PREFIX_CACHE_TOKENS", 4 * seq.shared_prefix)
    fit = transformers_backend.PREFIX_CACHE_TOKENS // seq.shared_prefix
    for k in range(fit + 3):
        variant = TokenReads((seq.input_ids[0] + k, *seq.input_ids[1:]), seq.reads, seq.shared_prefix)
        labeler.forward([variant])
    assert len(labeler._prefix_kv) == fit  # the oldest went first
    assert next(iter(labeler._prefix_kv))[0] == seq.input_ids[0] + 3


def test_turned_off_it_keeps_nothing(embedded_model_dir):
    backend = TransformersBackend(str(embedded_model_dir), model_name="embedded", device="cpu", dtype="float32",
                                  prefix_reuse=False)
    backend.forward(plans(backend, "harmless"))
    assert not backend._prefix_kv


def test_gpt2_with_learned_positions_matches_the_plain_path(tmp_path, embedded_model_dir):
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=49152, n_positions=1024, n_embd=64, n_layer=2, n_head=4)
    path = save_random_model(config, tmp_path / "gpt2", embedded_model_dir)
    backend = TransformersBackend(path, model_name="tiny-gpt2", device="cpu", dtype="float32")
    batch = plans(backend, "harmless")
    reused = backend.forward(batch)
    assert backend.prefix_reuse and backend._prefix_kv
    assert max_prob_diff(reused, plain(backend, batch)) < 1e-5


def test_a_model_with_sliding_window_layers_falls_back_to_the_plain_path(tmp_path, embedded_model_dir, caplog):
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         use_sliding_window=True, sliding_window=64, max_window_layers=0,
                         layer_types=["sliding_attention", "sliding_attention"])
    path = save_random_model(config, tmp_path / "qwen2-sliding", embedded_model_dir)
    backend = TransformersBackend(path, model_name="tiny-qwen2-sliding", device="cpu", dtype="float32")
    assert_falls_back(backend, caplog, "shared-prefix reuse is off for tiny-qwen2-sliding")


def test_reads_that_differ_from_the_plain_path_on_the_first_check_turn_reuse_off(embedded_model_dir, caplog):
    backend = TransformersBackend(str(embedded_model_dir), model_name="embedded", device="cpu", dtype="float32")
    read = backend._read

    def skewed(batch, prefix, kv=None):  # a model whose cached path is off by 1% of probability
        results = read(batch, prefix, kv)
        return [[np.log(np.exp(r) + 0.01) for r in rows] for rows in results] if prefix else results

    backend._read = skewed
    assert_falls_back(backend, caplog, "its reads differ from the plain path")


def test_a_constitutions_items_are_computed_once_on_top_of_the_rubric_prefix(labeler):
    """The principles of one item share the item (the scorer's hint says so): its KV is computed
    once, on the KV of the part all items share, and every read still equals the plain path."""
    encoder = PromptEncoder(labeler.tokenizer, 4096, True)
    forms = encoder.compile_principles(RubricRegistry.load().get("assistant"))
    fixed = max(f.fixed_tokens for f in forms.values())
    batch, item_prefixes = [], set()
    for prompt, response in ITEMS:
        encoded = [encoder.encode(f, prompt, response, fixed_tokens=fixed) for f in forms.values()]
        ids = [e.input_ids for e in encoded]
        shared = next(i for i in range(min(map(len, ids))) if len({seq[i] for seq in ids}) > 1)
        item_prefixes.add(ids[0][:shared])
        for form, e in zip(forms.values(), encoded, strict=True):
            batch += form.trie.plan(e.input_ids, shared)
    labeler._prefix_kv.clear()
    reused = labeler.forward(batch)
    assert labeler.prefix_reuse
    kept = set(labeler._prefix_kv)
    assert item_prefixes <= kept  # one KV per item ...
    (common,) = kept - item_prefixes  # ... and one for what all items share, computed first
    assert all(p[: len(common)] == common for p in item_prefixes) and len(common) >= MIN_SHARED_PREFIX
    assert max_prob_diff(reused, plain(labeler, batch)) < 1e-5


def test_a_transient_failure_after_the_check_fails_the_batch_and_reuse_stays_on(embedded_model_dir, monkeypatch):
    backend = TransformersBackend(str(embedded_model_dir), model_name="embedded", device="cpu", dtype="float32")
    batch = plans(backend, "harmless")
    expected = backend.forward(batch)  # checked against the plain path: reuse on
    assert backend.prefix_reuse and backend._prefix_checked
    real_read = backend._read

    def out_of_memory(batch, prefix, kv=None):
        if kv is not None:
            raise RuntimeError("CUDA out of memory (injected)")
        return real_read(batch, prefix, kv)

    monkeypatch.setattr(backend, "_read", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        backend.forward(batch)
    assert backend.prefix_reuse  # a transient failure says nothing about the model
    monkeypatch.setattr(backend, "_read", real_read)
    assert max_prob_diff(backend.forward(batch), expected) < 1e-6


def _prompt_groups(labeler, prompts: list[str]) -> tuple[list[TokenReads], list[tuple[int, ...]]]:
    """Each prompt with every response of ITEMS under `harmless`: the batch's reads, and each
    prompt group's shared prefix (whose KV is then dropped, so the next forward computes it)."""
    encoder = PromptEncoder(labeler.tokenizer, 4096, True)
    compiled = encoder.compile(RubricRegistry.load().get("harmless"))
    batch, prefixes = [], []
    for prompt in prompts:
        encoded = [encoder.encode(compiled, prompt, response) for _, response in ITEMS]
        ids = [e.input_ids for e in encoded]
        shared = next(i for i in range(min(map(len, ids))) if len({seq[i] for seq in ids}) > 1)
        prefixes.append(tuple(ids[0][:shared]))
        for e in encoded:
            batch += compiled.trie.plan(e.input_ids, shared)
    labeler.forward(batch)  # the rubric's own prefix kept, and reuse checked
    labeler._prefix_kv = type(labeler._prefix_kv)(
        (p, kv) for p, kv in labeler._prefix_kv.items() if p not in prefixes)
    return batch, prefixes


def _passes(labeler, batch) -> tuple[list[torch.Size], list]:
    """The input shapes of the model passes a forward of ``batch`` makes, and its reads."""
    passes = []
    model = labeler.model
    labeler.model = lambda **kw: passes.append(kw["input_ids"].shape) or model(**kw)
    try:
        return passes, labeler.forward(batch)
    finally:
        labeler.model = model


def test_new_prompt_groups_are_prefilled_in_one_pass_each_row_as_if_alone(labeler, monkeypatch):
    """A request's prompt groups of different lengths: their prompt KVs come from one batched
    pass (right-padded) that keeps each row's own tokens, equal to computing each alone."""
    monkeypatch.setattr(transformers_backend, "PREFILL_MAX_PADDING", float("inf"))
    batch, prefixes = _prompt_groups(labeler, [ITEMS[0][0], ITEMS[2][0] + " Please explain in detail, step by step.",
                                               ITEMS[3][0]])
    assert len(set(map(len, prefixes))) == 3
    passes, reused = _passes(labeler, batch)
    assert passes[0][0] == 3  # the three prompts in one pass, then one read per group
    assert len(passes) == 1 + 3
    assert max_prob_diff(reused, plain(labeler, batch)) < 1e-5
    for prefix in prefixes:
        batched = labeler._prefix_kv.pop(prefix)
        with torch.inference_mode():
            alone = labeler._kv_of(prefix)
        worst = max(float((a - b).abs().max() / b.abs().max()) for (ka, va), (kb, vb) in zip(batched, alone, strict=True)
                    for a, b in ((ka, kb), (va, vb)))
        assert worst < 1e-5, worst  # float rounding, relative to the layer's largest entry


def test_prompts_of_far_apart_lengths_are_prefilled_in_passes_of_little_padding(labeler):
    """Sorted by length, a pass ends where its padding would pass PREFILL_MAX_PADDING of its
    real tokens: two short prompts share a pass, the long one has its own."""
    long = ITEMS[2][0] + " Please explain in detail, step by step, with an example of each step." * 3
    batch, prefixes = _prompt_groups(labeler, [ITEMS[0][0], long, ITEMS[3][0]])
    passes, reused = _passes(labeler, batch)
    base = len(labeler._longest_kept(prefixes[0]))
    short, far = sorted(len(p) - base for p in prefixes[::2]), len(prefixes[1]) - base
    assert far > 2 * short[-1]
    # The reads are passes of len(ITEMS) rows, one per group; the long prompt's KV is computed
    # alone, as a lone new prefix always is.
    assert sorted(tuple(shape) for shape in passes if shape[0] != len(ITEMS)) == [(1, far), (2, short[-1])]
    assert 2 * short[-1] <= (1 + transformers_backend.PREFILL_MAX_PADDING) * sum(short)
    assert max_prob_diff(reused, plain(labeler, batch)) < 1e-5
