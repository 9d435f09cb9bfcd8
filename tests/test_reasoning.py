"""Unit tests for reasoned judgements, the pure pieces only (no server, no model weights):

- the ``reasoning`` block of a rubric (ReasoningSpec) and its defaults;
- the registry's ``extends:`` (nested merge) and the ``-reasoned`` preset variants;
- compiling a reasoned form with the embedded labeler's tokenizer (rationale stops, trusted
  answer ids, the token budget) and the chat template's thinking switch;
- server/reasoning.py (seeds, generation requests, rationale cutting, label inputs);
- averaging the exact reads of several rationales (ratings and pairwise orders);
- a request's reasoning settings merged over a rubric's (Scorer.rubric);
- the rationale cache (generation_key, RewardCache holding Generations).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from pydantic import ValidationError

from drlaif.protocol import MAX_SEED
from server.backends.base import Generation, GenerationRequest
from server.errors import InvalidRubric, UnknownRubric
from server.reasoning import (
    NO_RATIONALE,
    Rationale,
    label_input,
    rationale_of,
    rationale_requests,
    sample_seed,
)
from server.reward_cache import RewardCache, generation_key
from server.rubrics import RubricRegistry
from server.rubrics.model import ReasoningSpec, Rubric
from server.rubrics.registry import load_file, load_presets
from server.rubrics.render import CompiledReasoning, EncodedItem, PromptEncoder
from server.scorer import Scorer
from server.scoring import (
    OrderRead,
    Scale,
    expected_score,
    labels_in_context,
    mean_of_samples,
    mean_order,
    score_spread,
)

BASE_PRESETS = ("general", "harmless", "helpful", "summary")
# The embedded labeler's (SmolLM2) template ends the generation prompt like this.
ASSISTANT_START = "<|im_start|>assistant\n"
# A ChatML template with a Qwen3-style switch: enable_thinking=False pre-fills an empty
# thinking block after the generation prompt; True (or absent) leaves it to the model.
QWEN3_STYLE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def presets() -> dict[str, Rubric]:
    return load_presets()


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="module")
def thinking_tokenizer(embedded_model_dir):
    """A separate copy of the embedded tokenizer whose chat template honours enable_thinking."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    tok.chat_template = QWEN3_STYLE
    return tok


def with_reasoning(rubric: Rubric, **settings) -> Rubric:
    """The rubric with a reasoning block of these settings (its compare form keeps its own)."""
    return rubric.model_copy(update={"reasoning": ReasoningSpec(**settings)})


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


# --------------------------------------------------------------------------- ReasoningSpec


def test_several_samples_need_a_temperature():
    """Greedy rationales would all be identical: averaging them would only cost time."""
    with pytest.raises(ValidationError, match=r"samples=3 needs temperature > 0"):
        ReasoningSpec(samples=3, temperature=0)
    assert ReasoningSpec(samples=3, temperature=0.7).samples == 3
    assert ReasoningSpec(samples=1, temperature=0).samples == 1  # one greedy rationale is fine


@pytest.mark.parametrize("field", [{"max_tokens": -1}, {"max_tokens": 8193}, {"samples": 0}, {"samples": 17},
                                   {"temperature": -0.1}, {"bogus": 1}])
def test_out_of_range_and_unknown_fields_are_rejected(field):
    with pytest.raises(ValidationError):
        ReasoningSpec(**field)


def test_zero_budget_is_allowed():
    """max_tokens 0: no rationale, the label is read right after the instruction."""
    assert ReasoningSpec(max_tokens=0).max_tokens == 0


@pytest.mark.parametrize("instruction", ["", "   \n "])
def test_empty_instruction_needs_thinking(instruction):
    with pytest.raises(ValidationError, match="instruction is empty"):
        ReasoningSpec(instruction=instruction)
    # With the labeler's own thinking block there is nothing to ask in the user message.
    assert ReasoningSpec(instruction=instruction, thinking=True).thinking


@pytest.mark.parametrize("stop", [[""], [" "], ["Rating:", "\n\t"]])
def test_empty_or_whitespace_stop_strings_are_rejected(stop):
    """A whitespace stop would end every rationale at its first space or newline."""
    with pytest.raises(ValidationError, match="stop strings must not be empty or whitespace"):
        ReasoningSpec(stop=stop)


def test_default_stop_and_close_in_instruction_mode():
    spec = ReasoningSpec()
    # The form's answer prefix without its trailing space: where the labeler would start answering.
    assert spec.stop_strings("Rating: ") == ["Rating:"]
    assert spec.stop_strings("Better response: ") == ["Better response:"]
    assert spec.close_text() == "\n"


def test_default_stop_and_close_in_thinking_mode():
    spec = ReasoningSpec(thinking=True, instruction="")
    assert spec.stop_strings("Rating: ") == ["</think>"]
    assert spec.close_text() == "</think>\n\n"


def test_explicit_stop_and_close_win_and_are_copies():
    spec = ReasoningSpec(stop=["Verdict:", "Score"], close="\n\nSo:\n")
    stops = spec.stop_strings("Rating: ")
    assert stops == ["Verdict:", "Score"]
    stops.append("x")  # the caller's list is its own
    assert spec.stop == ["Verdict:", "Score"]
    assert spec.close_text() == "\n\nSo:\n"
    assert ReasoningSpec(close="").close_text() == ""  # an explicit empty close is kept, not defaulted


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", BASE_PRESETS)
def test_every_preset_has_a_reasoned_variant(presets, name):
    """The variant keeps the criteria (system prompts, scale, answer prefixes) and adds its
    own reasoning to both forms: the compare form's instruction talks about two responses."""
    base, reasoned = presets[name], presets[f"{name}-reasoned"]
    assert reasoned.system == base.system
    assert reasoned.scale == base.scale and reasoned.answer_prefix == base.answer_prefix
    assert base.reasoning is None and reasoned.reasoning is not None
    assert reasoned.reasoning.instruction.strip() and reasoned.reasoning.max_tokens > 0
    assert reasoned.user_template != base.user_template  # no longer asks for "the number only"
    # Nested merge: only compare.user_template and compare.reasoning are given in the variants file.
    assert reasoned.compare.system == base.compare.system
    assert reasoned.compare.answer_prefix == base.compare.answer_prefix
    assert reasoned.compare.labels == base.compare.labels
    assert base.compare.reasoning is None
    assert reasoned.compare.reasoning is not None
    assert reasoned.compare.reasoning.instruction != reasoned.reasoning.instruction
    # Each instruction asks the labeler to end with its form's answer prefix, which is the default stop.
    assert reasoned.answer_prefix.rstrip() in reasoned.reasoning.instruction
    assert reasoned.compare.answer_prefix.rstrip() in reasoned.compare.reasoning.instruction


def write(tmp_path, text: str):
    path = tmp_path / "rubrics.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_extending_an_unknown_rubric_names_it(tmp_path, presets):
    path = write(tmp_path, """
        rubrics:
          - extends: no-such-rubric
            name: mine
        """)
    with pytest.raises(ValueError, match=r"rubric #1 extends 'no-such-rubric', which is not defined"):
        load_file(path, presets)


def test_a_user_file_cannot_extend_a_preset_it_was_not_given(tmp_path):
    path = write(tmp_path, """
        - extends: general
          name: mine
        """)
    with pytest.raises(ValueError, match="extends 'general'"):
        load_file(path)  # no known rubrics
    assert [r.name for r in load_file(path, load_presets())] == ["mine"]


def test_nested_merge_keeps_the_base_compare_system(tmp_path, presets):
    """A variant giving only compare.user_template keeps every other compare field of its base."""
    path = write(tmp_path, """
        - extends: general
          name: general-pairs
          compare:
            user_template: "A: {prompt} / {response_a} / {response_b}. Which?"
        """)
    [rubric] = load_file(path, presets)
    base = presets["general"]
    assert rubric.compare.user_template == "A: {prompt} / {response_a} / {response_b}. Which?"
    assert rubric.compare.system == base.compare.system
    assert rubric.compare.answer_prefix == base.compare.answer_prefix
    # The rating form is the base's untouched.
    assert (rubric.system, rubric.user_template, rubric.reasoning) == (base.system, base.user_template, None)


def test_bad_reasoning_in_a_user_file_names_the_rubric_index(tmp_path, presets):
    path = write(tmp_path, """
        - extends: general
          name: fine
        - extends: general
          name: broken
          reasoning: {samples: 3, temperature: 0}
        """)
    with pytest.raises(ValueError, match=r"rubric #2 is invalid") as info:
        load_file(path, presets)
    assert "needs temperature > 0" in str(info.value)
    assert str(path) in str(info.value)


def test_a_user_file_extends_a_preset_and_an_earlier_entry(tmp_path, presets):
    """``extends`` sees the presets and the entries before it; reasoning blocks merge key by key."""
    path = write(tmp_path, """
        rubrics:
          - extends: general-reasoned
            name: sampled
            reasoning: {samples: 4, temperature: 0.8}
          - extends: sampled
            name: sampled-long
            reasoning: {max_tokens: 512}
        """)
    sampled, long = load_file(path, presets)
    base = presets["general-reasoned"].reasoning
    assert (sampled.reasoning.samples, sampled.reasoning.temperature) == (4, 0.8)
    assert sampled.reasoning.instruction == base.instruction and sampled.reasoning.max_tokens == 128
    assert (long.reasoning.samples, long.reasoning.temperature, long.reasoning.max_tokens) == (4, 0.8, 512)
    assert long.compare.reasoning == presets["general-reasoned"].compare.reasoning
    # Through the registry the file's rubrics join the presets.
    registry = RubricRegistry.load(path)
    assert registry.get("sampled-long").reasoning.max_tokens == 512
    assert registry.get("general").reasoning is None


# --------------------------------------------------------------------------- compiling reasoned forms


def test_reasoned_form_ends_where_the_answer_begins(tokenizer, presets):
    """The rendered pieces stop at the assistant turn start: the rationale comes next, and the
    answer prefix is appended by the server afterwards (answer_ids), not rendered."""
    rubric = presets["general-reasoned"]
    compiled = PromptEncoder(tokenizer, 4096).compile(rubric)
    last = compiled.piece_texts[-1]
    assert last.endswith(ASSISTANT_START)
    assert not last.endswith(rubric.answer_prefix) and rubric.answer_prefix not in last
    # The instruction closes the user message, after the template's own text.
    instruction = rubric.reasoning.instruction.strip()
    assert last.endswith(instruction + "<|im_end|>\n" + ASSISTANT_START)
    assert "Rate the response from 1 to 10." in last

    reasoning = compiled.reasoning
    answer_text = rubric.reasoning.close_text() + rubric.answer_prefix
    assert answer_text == "\nRating: "
    assert list(reasoning.answer_ids) == tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    assert decode(tokenizer, reasoning.answer_ids) == answer_text
    # The labels are tokenised as they follow the appended answer text, not the rendered input.
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    assert compiled.trie.label_tokens == labels_in_context(encode, answer_text, compiled.scale.labels)
    assert compiled.trie.labels == tuple(str(v) for v in range(1, 11))


def test_direct_form_still_ends_with_the_answer_prefix(tokenizer, presets):
    compiled = PromptEncoder(tokenizer, 4096).compile(presets["general"])
    assert compiled.reasoning is None
    assert compiled.piece_texts[-1].endswith(ASSISTANT_START + "Rating: ")


def test_compare_form_uses_its_own_reasoning(tokenizer, presets):
    rubric = presets["general-reasoned"]
    compiled = PromptEncoder(tokenizer, 4096).compile_comparison(rubric)
    last = compiled.piece_texts[-1]
    assert last.endswith(rubric.compare.reasoning.instruction.strip() + "<|im_end|>\n" + ASSISTANT_START)
    assert rubric.reasoning.instruction.strip() not in last
    assert compiled.reasoning.spec == rubric.compare.reasoning
    assert compiled.reasoning.stop_texts == ("Better response:",)
    assert decode(tokenizer, compiled.reasoning.answer_ids) == "\nBetter response: "


def test_compare_form_falls_back_to_the_rubric_reasoning(tokenizer, presets):
    """A compare form without its own block reasons with the rubric's; its stop is still the
    pairwise answer prefix."""
    rubric = with_reasoning(presets["general"], instruction="Think first.")
    compiled = PromptEncoder(tokenizer, 4096).compile_comparison(rubric)
    assert compiled.reasoning.spec == rubric.reasoning
    assert compiled.piece_texts[-1].endswith("Think first.<|im_end|>\n" + ASSISTANT_START)
    assert compiled.reasoning.stop_texts == ("Better response:",)


def test_fixed_tokens_count_the_rationale_budget_and_answer_ids(tokenizer, presets):
    encoder = PromptEncoder(tokenizer, 4096)
    compiled = encoder.compile(presets["general-reasoned"])
    reasoning = compiled.reasoning
    assert compiled.fixed_tokens == (sum(len(p) for p in compiled.piece_ids) + reasoning.spec.max_tokens
                                     + len(reasoning.answer_ids) + compiled.trie.max_label_tokens)
    # Only the budget differs between these two: fixed_tokens moves by exactly that much.
    bigger = encoder.compile(with_reasoning(presets["general-reasoned"],
                                            instruction=reasoning.spec.instruction, max_tokens=1000))
    assert bigger.fixed_tokens - compiled.fixed_tokens == 1000 - reasoning.spec.max_tokens


def test_a_rationale_budget_that_leaves_no_room_is_refused(tokenizer, presets):
    rubric = with_reasoning(presets["general"], max_tokens=2000)
    with pytest.raises(ValueError, match=r"rubric 'general' takes \d+ tokens, leaving -?\d+ of "
                                         r"max_input_tokens=1024 for prompt and response"):
        PromptEncoder(tokenizer, 1024).compile(rubric)
    PromptEncoder(tokenizer, 4096).compile(rubric)  # fits with a larger limit


def test_a_stop_string_with_a_special_token_is_refused(tokenizer, presets):
    """The labeler never emits <|im_end|> as text (generation ends there anyway)."""
    rubric = with_reasoning(presets["general"], stop=["<|im_end|>"])
    with pytest.raises(ValueError, match=r"stop string '<\|im_end\|>' holds a special token"):
        PromptEncoder(tokenizer, 4096).compile(rubric)


def test_default_stop_ids_decode_to_the_stop_text(tokenizer, presets):
    compiled = PromptEncoder(tokenizer, 4096).compile(presets["general-reasoned"])
    reasoning = compiled.reasoning
    assert reasoning.stop_texts == ("Rating:",)
    assert reasoning.stop_ids, "no stop sequence: the rationale would always run to max_tokens"
    assert len(set(reasoning.stop_ids)) == len(reasoning.stop_ids)
    for ids in reasoning.stop_ids:
        assert decode(tokenizer, ids).strip() == "Rating:"
    # Its plain tokenisation (after a newline, full stop, ...) is among them.
    assert tuple(tokenizer("Rating:", add_special_tokens=False)["input_ids"]) in reasoning.stop_ids


def test_stop_after_a_space_is_matched(tokenizer, presets):
    """The labeler writing "... overall. Rating: 7" emits " Rating" (one token with the space),
    so the stop must also be matched as the merged tokens, not only after a separate space."""
    compiled = PromptEncoder(tokenizer, 4096).compile(presets["general-reasoned"])
    after_space = tokenizer(" Rating:", add_special_tokens=False)["input_ids"]
    assert decode(tokenizer, after_space[:1]) == " Rating"  # the merge this is about
    generated = tokenizer("It is good. Rating:", add_special_tokens=False)["input_ids"]
    assert any(tuple(generated[-len(s):]) == s for s in compiled.reasoning.stop_ids)


# --------------------------------------------------------------------------- thinking switch


def thinking_rubric(presets) -> Rubric:
    return with_reasoning(presets["general"], thinking=True, instruction="", max_tokens=256)


def test_thinking_with_a_switching_template(thinking_tokenizer, presets):
    """With thinking the template is rendered with enable_thinking=True (no pre-filled empty
    block); the server closes the block itself before the answer prefix."""
    rubric = thinking_rubric(presets)
    compiled = PromptEncoder(thinking_tokenizer, 4096).compile(rubric)
    last = compiled.piece_texts[-1]
    assert last.endswith(ASSISTANT_START) and "<think>" not in last
    assert "Answer with the number only.<|im_end|>" in last  # no instruction appended
    reasoning = compiled.reasoning
    assert decode(thinking_tokenizer, reasoning.answer_ids) == "</think>\n\nRating: "
    assert "</think>" in reasoning.stop_texts
    for ids in reasoning.stop_ids:
        assert decode(thinking_tokenizer, ids).strip() == "</think>"
    # A form without thinking does not pass the switch at all: the template's default applies.
    direct = PromptEncoder(thinking_tokenizer, 4096).compile(presets["general"])
    assert direct.piece_texts[-1].endswith(ASSISTANT_START + "Rating: ")


def test_thinking_without_a_switch_is_refused(tokenizer, presets):
    """The embedded (SmolLM2) template ignores enable_thinking: thinking would silently be a
    plain read with no instruction, so it is an error."""
    with pytest.raises(ValueError, match="enable_thinking"):
        PromptEncoder(tokenizer, 4096).compile(thinking_rubric(presets))


def test_thinking_without_a_chat_template_is_refused(embedded_model_dir, presets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    tok.chat_template = None
    with pytest.raises(ValueError, match="needs a chat template"):
        PromptEncoder(tok, 4096).compile(thinking_rubric(presets))


# --------------------------------------------------------------------------- server/reasoning.py


def fake_reasoning(**spec) -> CompiledReasoning:
    """A compiled reasoning stage with made-up token ids (the functions here never tokenise)."""
    return CompiledReasoning(spec=ReasoningSpec(**spec), stop_texts=("Rating:",),
                             stop_ids=((5, 6), (9, 5, 6)), answer_ids=(70, 71, 72))


ITEM = EncodedItem(input_ids=(10, 11, 12, 13), text="rendered", truncated=True, shared_prefix=2)


def test_sample_seed_is_deterministic_and_spreads():
    ids = (10, 11, 12)
    assert sample_seed(7, ids, 0) == sample_seed(7, list(ids), 0)  # a function of its inputs only
    seeds = {sample_seed(7, ids, 0), sample_seed(7, ids, 1), sample_seed(8, ids, 0),
             sample_seed(7, (10, 11), 0)}
    assert len(seeds) == 4  # differs by sample index, base seed and the item's ids
    assert sample_seed(None, ids, 0) == sample_seed(0, ids, 0)  # no request seed counts as 0
    for base in (None, 0, 1, MAX_SEED):
        for k in range(8):
            assert 0 <= sample_seed(base, ids, k) <= MAX_SEED  # a valid vLLM seed


def test_zero_budget_plans_no_generation():
    assert rationale_requests(fake_reasoning(max_tokens=0, samples=3, temperature=1.0), ITEM, 5) == [None] * 3


def test_greedy_rationale_has_no_seed():
    [request] = rationale_requests(fake_reasoning(max_tokens=32), ITEM, seed=123)
    assert request == GenerationRequest(ITEM.input_ids, 32, temperature=0.0, seed=None,
                                        stop=((5, 6), (9, 5, 6)))


def test_sampled_rationales_have_distinct_reproducible_seeds():
    reasoning = fake_reasoning(max_tokens=16, samples=4, temperature=0.7)
    requests = rationale_requests(reasoning, ITEM, seed=42)
    assert len(requests) == 4
    assert [r.seed for r in requests] == [sample_seed(42, ITEM.input_ids, k) for k in range(4)]
    assert len({r.seed for r in requests}) == 4
    assert all((r.temperature, r.max_tokens, r.prompt_ids) == (0.7, 16, ITEM.input_ids) for r in requests)
    assert rationale_requests(reasoning, ITEM, seed=42) == requests  # same request, same rationales
    assert [r.seed for r in rationale_requests(reasoning, ITEM, seed=43)] != [r.seed for r in requests]


def test_rationale_of_cuts_the_longest_stop_only_when_stopped():
    reasoning = fake_reasoning()
    # Both (5, 6) and (9, 5, 6) end it: all of the stop text's tokens go.
    assert rationale_of(Generation((1, 2, 9, 5, 6), "stop"), reasoning) == Rationale((1, 2), "stop")
    assert rationale_of(Generation((1, 2, 5, 6), "stop"), reasoning) == Rationale((1, 2), "stop")
    # Ended by budget or end-of-sequence: the tokens are kept as generated, even if they end like a stop.
    assert rationale_of(Generation((1, 2, 5, 6), "length"), reasoning) == Rationale((1, 2, 5, 6), "length")
    assert rationale_of(Generation((1, 2), "eos"), reasoning) == Rationale((1, 2), "eos")


def test_label_input_appends_rationale_then_trusted_answer_ids():
    reasoning = fake_reasoning()
    out = label_input(ITEM, Rationale((1, 2, 3), "stop"), reasoning)
    assert out.input_ids == (10, 11, 12, 13, 1, 2, 3, 70, 71, 72)
    assert (out.shared_prefix, out.truncated) == (2, True)
    # No rationale (budget 0): the answer ids follow the rendered input directly.
    assert label_input(ITEM, NO_RATIONALE, reasoning).input_ids == (10, 11, 12, 13, 70, 71, 72)


# --------------------------------------------------------------------------- averaging samples


def logs(probs):
    return [math.log(p) if p > 0 else -math.inf for p in probs]


def test_one_sample_is_returned_unchanged():
    scale = Scale(1, 3)
    only = expected_score(logs([0.2, 0.3, 0.1]), scale)
    assert mean_of_samples([only], scale) is only
    assert score_spread([only]) == 0.0
    with pytest.raises(ValueError):
        mean_of_samples([], scale)


def test_mean_of_samples_averages_distributions():
    scale = Scale(1, 3)
    a = expected_score(logs([0.5, 0.25, 0.25]), scale)  # mass 1.0, score 1.75
    b = expected_score(logs([0.0, 0.1, 0.3]), scale)    # mass 0.4, renormalised (0, .25, .75), score 2.75
    mean = mean_of_samples([a, b], scale)
    np.testing.assert_allclose(mean.distribution, [0.25, 0.25, 0.5])
    assert mean.score == pytest.approx(0.25 * 1 + 0.25 * 2 + 0.5 * 3)
    assert mean.score == pytest.approx((a.score + b.score) / 2)  # linear: the mean score, too
    assert mean.reward == pytest.approx(scale.to_reward(mean.score)) == pytest.approx(0.25)
    assert mean.label_mass == pytest.approx(0.7)
    assert score_spread([a, b]) == pytest.approx(0.5)  # population std of 1.75 and 2.75
    assert score_spread([a, b, b]) == pytest.approx(float(np.std([1.75, 2.75, 2.75])))


def test_mean_of_samples_rejects_a_distribution_of_another_scale():
    a = expected_score(logs([0.5, 0.5]), Scale(0, 1))
    with pytest.raises(ValueError, match="distributions over 3 labels"):
        mean_of_samples([a, a], Scale(1, 3))


def test_mean_order_averages_each_field():
    one = OrderRead(p_first=0.9, p_second=0.1, label_mass=0.8)
    assert mean_order([one]) is one
    mean = mean_order([one, OrderRead(0.3, 0.7, 0.4)])
    assert (mean.p_first, mean.p_second, mean.label_mass) == pytest.approx((0.6, 0.4, 0.6))
    with pytest.raises(ValueError):
        mean_order([])


# --------------------------------------------------------------------------- Scorer.rubric


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    """Scorer.rubric only needs the registry: no backend or model is built."""
    s = Scorer.__new__(Scorer)
    s.rubrics = RubricRegistry.load()
    return s


def test_no_settings_is_the_registry_rubric(scorer):
    assert scorer.rubric("general-reasoned") is scorer.rubrics.get("general-reasoned")
    assert scorer.rubric(None).name == "general"
    with pytest.raises(UnknownRubric):
        scorer.rubric("nope", {})


def test_request_settings_merge_over_a_reasoned_preset(scorer):
    base = scorer.rubrics.get("general-reasoned")
    variant = scorer.rubric("general-reasoned", {"samples": 4, "temperature": 0.5})
    assert (variant.reasoning.samples, variant.reasoning.temperature) == (4, 0.5)
    assert variant.reasoning.instruction == base.reasoning.instruction  # unspecified: the rubric's own
    assert variant.reasoning.max_tokens == base.reasoning.max_tokens
    # The compare form's own block gets the same settings over its own instruction.
    assert (variant.compare.reasoning.samples, variant.compare.reasoning.temperature) == (4, 0.5)
    assert variant.compare.reasoning.instruction == base.compare.reasoning.instruction
    assert variant.compare.system == base.compare.system
    # The registry's rubric is untouched.
    assert base.reasoning.samples == 1 and scorer.rubrics.get("general-reasoned") is base


def test_empty_settings_turn_reasoning_on_with_defaults(scorer):
    variant = scorer.rubric("general", {})
    assert variant.reasoning == ReasoningSpec()
    assert variant.compare.reasoning is None  # the compare form then reasons with the rubric's block
    assert scorer.rubrics.get("general").reasoning is None
    assert scorer.rubric("general", {"max_tokens": 64}).reasoning.max_tokens == 64


@pytest.mark.parametrize(("settings", "expected"), [
    ({"samples": 3}, "needs temperature > 0"),  # temperature 0 comes from the preset's (default) block
    ({"max_tokens": -1}, "max_tokens: "),
    ({"bogus": True}, "bogus: "),
    ({"stop": [" "]}, "stop strings must not be empty"),
])
def test_bad_settings_raise_invalid_rubric(scorer, settings, expected):
    with pytest.raises(InvalidRubric) as info:
        scorer.rubric("general-reasoned", settings)
    message = info.value.message
    assert message.startswith("rubric 'general-reasoned': invalid reasoning settings: ")
    assert expected in message
    assert "Value error," not in message
    assert info.value.status_code == 422


# --------------------------------------------------------------------------- rationale cache


def test_reward_cache_stores_a_generation_as_is():
    cache = RewardCache(4)
    generation = Generation((1, 2, 3), "stop")
    key = generation_key("m", GenerationRequest((1,), 8))
    cache.put(key, generation)
    assert cache.get(key) is generation
    assert (cache.hits, len(cache)) == (1, 1)
    off = RewardCache(0)
    off.put(key, generation)
    assert off.get(key) is None and len(off) == 0


def test_generation_key_covers_every_field_of_the_request():
    base = GenerationRequest((1, 2, 3), 16, temperature=0.7, seed=1, stop=((5, 6),))
    key = generation_key("m", base)
    # Lists become tuples: an equal request has the same key.
    same = GenerationRequest([1, 2, 3], 16, temperature=0.7, seed=1, stop=[[5, 6]])
    assert generation_key("m", same) == key
    others = [
        GenerationRequest((1, 2, 3), 16, temperature=0.7, seed=2, stop=((5, 6),)),
        GenerationRequest((1, 2, 3), 16, temperature=0.7, seed=1, stop=((5, 7),)),
        GenerationRequest((1, 2, 3), 16, temperature=0.7, seed=1, stop=()),
        GenerationRequest((1, 2, 3), 17, temperature=0.7, seed=1, stop=((5, 6),)),
        GenerationRequest((1, 2, 3), 16, temperature=0.8, seed=1, stop=((5, 6),)),
        GenerationRequest((1, 2, 4), 16, temperature=0.7, seed=1, stop=((5, 6),)),
    ]
    keys = {key, generation_key("other-model", base)} | {generation_key("m", r) for r in others}
    assert len(keys) == 2 + len(others)
