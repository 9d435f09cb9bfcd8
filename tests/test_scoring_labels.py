"""Unit tests for server/scoring/labels.py: label tokens in context, the label trie, and
the exact multi-token label probabilities, on small tokenizers built here.

No model is loaded: the "backend" is a table of hand-chosen conditional next-token
probabilities, and every expected value is computed by hand (or by an independent
reference formula written from the label set, not from the trie).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from server.scoring import LabelTrie, Scale, TokenReads, expected_score, labels_in_context

# --------------------------------------------------------------------------- tokenizers

# Word-level tokenizers with fixed ids, so expected token ids are known by hand.
# Digits "0".."9" are ids 10..19, "10" (when present) is id 20.
WORDS = {"[UNK]": 0, "Rating": 1, ":": 2, "Score": 3, "the": 4, "answer": 5, "is": 6}
DIGIT = {str(d): 10 + d for d in range(10)}
TEN = 20


def digit_splitting_tokenizer() -> Tokenizer:
    """Vocab has single digits only; numbers are split into one token per digit."""
    tok = Tokenizer(models.WordLevel({**WORDS, **DIGIT}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return tok


def single_ten_tokenizer() -> Tokenizer:
    """Vocab has "10" as one token (numbers are whole words)."""
    tok = Tokenizer(models.WordLevel({**WORDS, **DIGIT, "10": TEN}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def encoder(tok: Tokenizer):
    return lambda text: tok.encode(text, add_special_tokens=False).ids


# Byte-level BPE tokenizers shaped like real ones (pre-tokenizer regexes of Qwen2,
# Llama 3 and GPT-2), trained in a few milliseconds on a tiny corpus.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CORPUS = [f"Rating: {n}. Rate the answer from 1 to 10; 10 is best, {n} of 10." for n in range(1, 11)] * 20


def byte_level_bpe(split_regex: str | None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    if split_regex is None:  # GPT-2: the space before a number is part of the number's token
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def hf_encoder(tok: PreTrainedTokenizerFast):
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


SCALE_1_10 = Scale(1, 10).labels


# --------------------------------------------------------------------------- fake backend


def answer_reads(plans: list[TokenReads], prefix: tuple[int, ...], cond: dict) -> list[list[np.ndarray]]:
    """What a backend would return for ``plans``.

    ``cond[path][token]`` is P(token | prefix + path). Each read is looked up from the
    sequence's own ``input_ids[:position]``, so a wrong position or sequence in the
    plan shows up as a lookup of the wrong context (KeyError / wrong values).
    """
    results = []
    for plan in plans:
        chain = []
        for position, candidates in plan.reads:
            context = plan.input_ids[:position]
            assert context[: len(prefix)] == prefix
            probs = cond[tuple(context[len(prefix) :])]
            chain.append(np.log(np.array([probs.get(c, 0.0) for c in candidates], dtype=np.float64)))
        results.append(chain)
    return results


def reference_label_probs(label_tokens: dict[str, tuple[int, ...]], cond: dict) -> dict[str, float]:
    """Independent formula from the label set: P(tokens) * (1 - P(a one-token continuation))."""
    sequences = set(label_tokens.values())
    out = {}
    for label, tokens in label_tokens.items():
        p = 1.0
        for k, t in enumerate(tokens):
            p *= cond[tokens[:k]][t]
        continuations = {s[-1] for s in sequences if len(s) == len(tokens) + 1 and s[:-1] == tokens}
        p *= 1.0 - sum(cond.get(tokens, {}).get(c, 0.0) for c in continuations)
        out[label] = p
    return out


# --------------------------------------------------------------------------- labels_in_context


def test_digit_splitting_tokenizer_gives_two_tokens_for_ten():
    labels = labels_in_context(encoder(digit_splitting_tokenizer()), "Rating: ", SCALE_1_10)
    assert list(labels) == list(SCALE_1_10)
    for d in range(1, 10):
        assert labels[str(d)] == (DIGIT[str(d)],)
    assert labels["10"] == (DIGIT["1"], DIGIT["0"])


def test_single_token_ten_tokenizer_gives_one_token_per_label():
    labels = labels_in_context(encoder(single_ten_tokenizer()), "Rating: ", SCALE_1_10)
    for d in range(1, 10):
        assert labels[str(d)] == (DIGIT[str(d)],)
    assert labels["10"] == (TEN,)


def test_labels_in_context_zero_based_scale():
    labels = labels_in_context(encoder(digit_splitting_tokenizer()), "Score: ", Scale(0, 4).labels)
    assert labels == {str(d): (DIGIT[str(d)],) for d in range(5)}


def test_label_that_merges_into_the_context_is_rejected():
    # "Score" + "1" is the one word "Score1" (unknown): the context's last token changes.
    with pytest.raises(ValueError, match=r"tokenises differently once label '1' follows") as exc:
        labels_in_context(encoder(single_ten_tokenizer()), "Score", SCALE_1_10)
    assert "answer_prefix" in str(exc.value)
    assert "'Score'" in str(exc.value)  # the end of the offending prefix is shown


def test_label_that_adds_no_tokens_is_rejected():
    # A whitespace label disappears in the whitespace pre-tokenizer: no label tokens at all.
    with pytest.raises(ValueError, match="tokenises differently"):
        labels_in_context(encoder(digit_splitting_tokenizer()), "Rating: ", ["1", " "])


def test_real_style_bpe_digit_splitting():
    tok = byte_level_bpe(QWEN2_SPLIT)
    labels = labels_in_context(hf_encoder(tok), "Rating: ", SCALE_1_10)
    one, zero = tok.convert_tokens_to_ids(["1", "0"])
    assert labels["1"] == (one,)
    assert labels["10"] == (one, zero)
    assert all(len(labels[str(d)]) == 1 for d in range(1, 10))
    trie = LabelTrie(labels)
    assert trie.num_sequences == 1 and trie.max_label_tokens == 2


def test_real_style_bpe_with_single_token_ten():
    tok = byte_level_bpe(LLAMA3_SPLIT)
    ten = tok.convert_tokens_to_ids("10")
    assert ten != tok.unk_token_id and isinstance(ten, int)  # precondition: "10" was learned
    labels = labels_in_context(hf_encoder(tok), "Rating: ", SCALE_1_10)
    assert labels["10"] == (ten,)
    assert all(len(t) == 1 for t in labels.values())
    assert len(set(labels.values())) == 10
    trie = LabelTrie(labels)
    assert trie.num_sequences == 1 and trie.max_label_tokens == 1


def test_real_style_gpt2_bpe_merges_space_into_label():
    tok = byte_level_bpe(None)
    enc = hf_encoder(tok)
    # precondition: " 1" is one token, so "Rating: " + "1" re-tokenises the trailing space
    assert len(enc(" 1")) == 1
    with pytest.raises(ValueError, match="tokenises differently"):
        labels_in_context(enc, "Rating: ", SCALE_1_10)
    # ...while an answer prefix without the trailing space works
    labels = labels_in_context(enc, "Rating:", SCALE_1_10)
    assert len(labels) == 10


# --------------------------------------------------------------------------- trie construction


def test_trie_rejects_empty_label_set():
    with pytest.raises(ValueError, match="at least one label"):
        LabelTrie({})


def test_trie_rejects_label_without_tokens():
    with pytest.raises(ValueError, match=r"label '2' has no tokens"):
        LabelTrie({"1": [11], "2": []})


def test_trie_rejects_duplicate_token_sequences():
    with pytest.raises(ValueError, match=r"labels '1' and 'one' have the same tokens \(11, 10\)"):
        LabelTrie({"1": [11, 10], "one": [11, 10]})


def test_trie_normalises_token_ids_to_int_tuples():
    trie = LabelTrie({"a": np.array([3, 4]), "b": [np.int64(5)]})
    assert trie.label_tokens == {"a": (3, 4), "b": (5,)}
    assert all(type(t) is int for t in trie.label_tokens["a"])
    assert trie.labels == ("a", "b")


# --------------------------------------------------------------------------- digit splitting by hand

PREFIX = (1, 2)  # "Rating", ":"
D = DIGIT

# Hand-chosen next-token probabilities after "Rating:" (sum 0.95; 0.05 off-scale).
ROOT = {D["1"]: 0.30, D["2"]: 0.05, D["3"]: 0.05, D["4"]: 0.05, D["5"]: 0.10,
        D["6"]: 0.10, D["7"]: 0.20, D["8"]: 0.05, D["9"]: 0.05}  # fmt: skip
P0_AFTER_1 = 0.25  # P("0" | "Rating: 1")


def digit_trie() -> LabelTrie:
    return LabelTrie(labels_in_context(encoder(digit_splitting_tokenizer()), "Rating: ", SCALE_1_10))


def test_digit_splitting_plan_is_one_sequence_with_two_reads():
    trie = digit_trie()
    assert trie.num_sequences == 1
    assert trie.max_label_tokens == 2
    (plan,) = trie.plan(PREFIX)
    assert plan.input_ids == PREFIX + (D["1"],)
    assert plan.num_tokens == len(PREFIX) + 1
    assert plan.reads == (
        (len(PREFIX), tuple(D[str(d)] for d in range(1, 10))),  # P(first digit | prefix)
        (len(PREFIX) + 1, (D["0"],)),  # P("0" | prefix + "1")
    )


def test_digit_splitting_plan_accepts_any_prefix_sequence():
    trie = digit_trie()
    (plan,) = trie.plan([7, 7, 7, 7, 7])
    assert plan.input_ids == (7, 7, 7, 7, 7, D["1"])
    assert [pos for pos, _ in plan.reads] == [5, 6]
    (empty,) = trie.plan(())
    assert empty.input_ids == (D["1"],) and [pos for pos, _ in empty.reads] == [0, 1]


def test_digit_splitting_label_probabilities_by_hand():
    trie = digit_trie()
    root = np.log([ROOT[D[str(d)]] for d in range(1, 10)])
    logp = trie.label_logprobs([[root, np.log([P0_AFTER_1])]])
    probs = np.exp(logp)
    expected = {
        "1": 0.30 * (1 - 0.25),  # 0.225: "1" not followed by "0"
        "2": 0.05, "3": 0.05, "4": 0.05, "5": 0.10, "6": 0.10, "7": 0.20, "8": 0.05, "9": 0.05,
        "10": 0.30 * 0.25,  # 0.075
    }  # fmt: skip
    assert probs == pytest.approx([expected[label] for label in trie.labels], rel=1e-12)
    assert probs.sum() == pytest.approx(0.95, rel=1e-12)  # all of the root's on-scale mass


def test_digit_splitting_via_fake_backend_matches_hand_values():
    trie = digit_trie()
    cond = {(): ROOT, (D["1"],): {D["0"]: P0_AFTER_1}}
    probs = np.exp(trie.label_logprobs(answer_reads(trie.plan(PREFIX), PREFIX, cond)))
    assert dict(zip(trie.labels, probs, strict=True))["1"] == pytest.approx(0.225)
    assert dict(zip(trie.labels, probs, strict=True))["10"] == pytest.approx(0.075)


@pytest.mark.parametrize(
    ("p0", "p1", "p10"),
    [
        (0.0, 0.30, 0.0),  # "1" is never continued: P(1) = P("1"), P(10) = 0
        (1.0, 0.0, 0.30),  # "1" is always continued: every "1" is a "10"
        (0.5, 0.15, 0.15),
    ],
)
def test_digit_splitting_extreme_continuations(p0, p1, p10):
    trie = digit_trie()
    root = np.log([ROOT[D[str(d)]] for d in range(1, 10)])
    with np.errstate(divide="ignore"):
        read2 = np.log([p0])
    logp = trie.label_logprobs([[root, read2]])
    assert not np.isnan(logp).any()
    probs = dict(zip(trie.labels, np.exp(logp), strict=True))
    assert probs["1"] == pytest.approx(p1, abs=1e-15)
    assert probs["10"] == pytest.approx(p10, abs=1e-15)
    assert probs["7"] == pytest.approx(0.20)


def test_digit_splitting_end_to_end_expected_score():
    trie = digit_trie()
    root = np.log([ROOT[D[str(d)]] for d in range(1, 10)])
    result = expected_score(trie.label_logprobs([[root, np.log([P0_AFTER_1])]]), Scale(1, 10))
    # sum(i * P(i)) = .225 + 2*.05 + 3*.05 + 4*.05 + 5*.1 + 6*.1 + 7*.2 + 8*.05 + 9*.05 + 10*.075
    numerator = 0.225 + 0.10 + 0.15 + 0.20 + 0.50 + 0.60 + 1.40 + 0.40 + 0.45 + 0.75  # 4.775
    assert result.label_mass == pytest.approx(0.95)
    assert result.score == pytest.approx(numerator / 0.95)
    assert result.reward == pytest.approx((numerator / 0.95 - 5.5) / 4.5)
    assert result.distribution[0] == pytest.approx(0.225 / 0.95)
    assert result.distribution[9] == pytest.approx(0.075 / 0.95)


def test_naive_single_read_would_be_wrong():
    """The point of the trie: reading only the first token would call every "10" a "1"."""
    trie = digit_trie()
    root = np.log([ROOT[D[str(d)]] for d in range(1, 10)])
    exact = expected_score(trie.label_logprobs([[root, np.log([0.9])]]), Scale(1, 10)).score
    naive = expected_score(np.append(root, -np.inf), Scale(1, 10)).score
    assert exact > naive + 1.0


def test_zero_based_digit_scale_has_no_continuations():
    trie = LabelTrie(labels_in_context(encoder(digit_splitting_tokenizer()), "Score: ", Scale(0, 9).labels))
    (plan,) = trie.plan(PREFIX)
    assert plan.input_ids == PREFIX
    assert plan.reads == ((len(PREFIX), tuple(range(10, 20))),)


def test_zero_to_ten_scale_reads_zero_at_root_and_after_one():
    trie = LabelTrie(labels_in_context(encoder(digit_splitting_tokenizer()), "Score: ", Scale(0, 10).labels))
    (plan,) = trie.plan(PREFIX)
    assert plan.reads == ((2, tuple(range(10, 20))), (3, (D["0"],)))
    root = {D[str(d)]: 0.1 for d in range(10)}
    cond = {(): root, (D["1"],): {D["0"]: 0.4}}
    logp = trie.label_logprobs(answer_reads([plan], PREFIX, cond))
    probs = dict(zip(trie.labels, np.exp(logp), strict=True))
    assert probs["0"] == pytest.approx(0.1)
    assert probs["1"] == pytest.approx(0.06)
    assert probs["10"] == pytest.approx(0.04)
    assert sum(probs.values()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- single-token "10" by hand


def ten_trie() -> LabelTrie:
    return LabelTrie(labels_in_context(encoder(single_ten_tokenizer()), "Rating: ", SCALE_1_10))


def test_single_token_ten_plan_is_just_the_prefix():
    trie = ten_trie()
    assert trie.num_sequences == 1
    assert trie.max_label_tokens == 1
    (plan,) = trie.plan(PREFIX)
    assert plan.input_ids == PREFIX
    assert plan.reads == ((len(PREFIX), tuple(D[str(d)] for d in range(1, 10)) + (TEN,)),)


def test_single_token_ten_probabilities_are_the_read_unchanged():
    trie = ten_trie()
    values = np.log([0.02, 0.03, 0.05, 0.05, 0.1, 0.1, 0.2, 0.25, 0.1, 0.05])  # sum 0.95
    logp = trie.label_logprobs([[values]])
    assert logp == pytest.approx(values, rel=1e-12)
    assert trie.labels == SCALE_1_10


# --------------------------------------------------------------------------- general tries

# Token paths: "e"=(1,), "a"=(1,2), "b"=(1,2,4), "c"=(1,3), "d"=(1,3,5), "f"=(6,).
# "e" is a prefix of four longer labels and of two branches that diverge after token 1.
BRANCHED = {"a": (1, 2), "b": (1, 2, 4), "c": (1, 3), "d": (1, 3, 5), "e": (1,), "f": (6,)}
BRANCHED_COND = {
    (): {1: 0.6, 6: 0.3},  # 0.1 off the labels
    (1,): {2: 0.5, 3: 0.25},
    (1, 2): {4: 0.4},
    (1, 3): {5: 0.8},
}
BRANCHED_EXPECTED = {
    "a": 0.6 * 0.5 * (1 - 0.4),  # 0.18
    "b": 0.6 * 0.5 * 0.4,  # 0.12
    "c": 0.6 * 0.25 * (1 - 0.8),  # 0.03
    "d": 0.6 * 0.25 * 0.8,  # 0.12
    "e": 0.6 * (1 - 0.5 - 0.25),  # 0.15
    "f": 0.3,
}


def test_branched_trie_plans_one_chain_per_deepest_branch():
    trie = LabelTrie(BRANCHED)
    assert trie.num_sequences == 2
    assert trie.max_label_tokens == 3
    prefix = (100, 101, 102)
    plans = trie.plan(prefix)
    by_path = {p.input_ids[len(prefix) :]: p for p in plans}
    assert set(by_path) == {(1, 2), (1, 3)}
    assert all(p.input_ids[: len(prefix)] == prefix for p in plans)
    # Each chain reads at the root, after token 1, and after its own branch token.
    assert by_path[(1, 2)].reads == ((3, (1, 6)), (4, (2, 3)), (5, (4,)))
    assert by_path[(1, 3)].reads == ((3, (1, 6)), (4, (2, 3)), (5, (5,)))


def test_branched_trie_label_probabilities_by_hand():
    trie = LabelTrie(BRANCHED)
    prefix = (100,)
    logp = trie.label_logprobs(answer_reads(trie.plan(prefix), prefix, BRANCHED_COND))
    probs = dict(zip(trie.labels, np.exp(logp), strict=True))
    assert probs == pytest.approx(BRANCHED_EXPECTED, rel=1e-12)
    assert sum(probs.values()) == pytest.approx(0.9)  # = P(1) + P(6) at the root
    assert probs == pytest.approx(reference_label_probs(BRANCHED, BRANCHED_COND), rel=1e-12)


def test_branched_trie_output_follows_label_order():
    order = ["f", "d", "a", "e", "c", "b"]
    trie = LabelTrie({k: BRANCHED[k] for k in order})
    assert trie.labels == tuple(order)
    logp = trie.label_logprobs(answer_reads(trie.plan(()), (), BRANCHED_COND))
    assert np.exp(logp) == pytest.approx([BRANCHED_EXPECTED[k] for k in order], rel=1e-12)


def test_internal_node_that_is_not_a_label_gets_no_probability():
    # (1,) is on the path but is no label: its "rest" mass belongs to nobody.
    tokens = {"a": (1, 2), "b": (1, 3), "f": (6,)}
    cond = {(): {1: 0.6, 6: 0.3}, (1,): {2: 0.5, 3: 0.25}}
    trie = LabelTrie(tokens)
    (plan,) = trie.plan((9,))
    assert plan.input_ids == (9, 1)
    assert plan.reads == ((1, (1, 6)), (2, (2, 3)))
    probs = dict(zip(trie.labels, np.exp(trie.label_logprobs(answer_reads([plan], (9,), cond))), strict=True))
    assert probs == pytest.approx({"a": 0.3, "b": 0.15, "f": 0.3})


def test_scale_to_hundred_matches_reference_formula():
    """1..100 with digit splitting: nine chains ("1","0" is the deepest, then "2".."9")."""
    tok = digit_splitting_tokenizer()
    labels = labels_in_context(encoder(tok), "Rating: ", Scale(1, 100).labels)
    assert labels["100"] == (D["1"], D["0"], D["0"])
    assert labels["57"] == (D["5"], D["7"])
    trie = LabelTrie(labels)
    assert trie.num_sequences == 9
    assert trie.max_label_tokens == 3
    plans = trie.plan(PREFIX)
    assert sorted(p.input_ids for p in plans) == sorted(
        [PREFIX + (D["1"], D["0"])] + [PREFIX + (D[str(d)],) for d in range(2, 10)]
    )
    assert max(len(p.reads) for p in plans) == 3 and min(len(p.reads) for p in plans) == 2

    rng = np.random.default_rng(0)

    def dist(tokens):
        p = rng.dirichlet(np.ones(len(tokens) + 1))  # one extra outcome: stop / off-label
        return dict(zip(tokens, p[:-1].tolist(), strict=True))

    digits = [D[str(d)] for d in range(10)]
    cond = {(): dist(digits[1:])}
    for d in range(1, 10):
        cond[(D[str(d)],)] = dist(digits)
    cond[(D["1"], D["0"])] = dist([D["0"]])
    logp = trie.label_logprobs(answer_reads(plans, PREFIX, cond))
    probs = dict(zip(trie.labels, np.exp(logp), strict=True))
    reference = reference_label_probs(labels, cond)
    assert probs == pytest.approx(reference, rel=1e-10)
    assert sum(probs.values()) == pytest.approx(sum(cond[()].values()), rel=1e-12)


# --------------------------------------------------------------------------- label_logprobs errors


def test_label_logprobs_wrong_number_of_chains():
    trie = LabelTrie(BRANCHED)
    results = answer_reads(trie.plan(()), (), BRANCHED_COND)
    with pytest.raises(ValueError, match="expected 2 read results, got 1"):
        trie.label_logprobs(results[:1])


def test_label_logprobs_wrong_number_of_values_in_a_read():
    trie = digit_trie()
    with pytest.raises(ValueError, match="expected 9 values"):
        trie.label_logprobs([[np.zeros(8), np.zeros(1)]])


def test_label_logprobs_wrong_number_of_reads_in_a_chain():
    trie = digit_trie()
    with pytest.raises(ValueError):
        trie.label_logprobs([[np.log(np.full(9, 0.1))]])


def test_label_logprobs_accepts_plain_lists():
    trie = digit_trie()
    logp = trie.label_logprobs([[[math.log(0.1)] * 9, [math.log(0.5)]]])
    assert np.exp(logp[0]) == pytest.approx(0.05) and np.exp(logp[-1]) == pytest.approx(0.05)
