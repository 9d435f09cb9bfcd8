"""Unit tests for constitutions (rubrics with principles): validation, the aggregation formulas,
the seeded principle draw, rendering every principle of an item alike with the embedded
tokenizer, the scorer's principle choice, and the client/trainer/eval side of per-principle
results. No server process, no vLLM."""

from __future__ import annotations

import json
import logging
import math
import textwrap

import numpy as np
import pytest
from pydantic import ValidationError
from support import item_score

from drlaif.client import RewardServerError, _parse_results, principle_means
from drlaif.protocol import (
    CompareResponse,
    ItemPreference,
    ItemScore,
    PrincipleAnswer,
    PrincipleScore,
    ScoreAnswer,
)
from server.errors import InvalidRubric, RubricCannotCompare
from server.rubrics import Rubric
from server.rubrics.registry import load_file, load_presets
from server.rubrics.render import CompiledComparison, CompiledRubric, PromptEncoder
from server.scoring import Preference, Scale, ScoreResult
from server.scoring.aggregate import aggregate_preferences, aggregate_scores, normalised, sample_principle
from server.scoring.reward import result_of

URL = "http://labeler.test"
ASSISTANT_WEIGHTS = {"helpful": 0.5, "harmless": 0.3, "honest": 0.2}


def base_rubric(principles, name: str = "charter", **extra) -> dict:
    return {"name": name, "system": "Judge the reply.", "user_template": "<p>\n{prompt}\n</p>\n<r>\n{response}\n</r>",
            "principles": principles, **extra}


def principle(name: str, weight: float = 1.0, instruction: str | None = None, **extra) -> dict:
    out = {"name": name, "weight": weight, **extra}
    out["instruction"] = f"How {name} is the reply, from 1 to 10?" if instruction is None else instruction
    return out


@pytest.fixture(scope="module")
def presets() -> dict[str, Rubric]:
    return load_presets()


@pytest.fixture(scope="module")
def assistant(presets) -> Rubric:
    return presets["assistant"]


# =========================================================================== 1. validation


def test_duplicate_principle_names_fail_naming_rubric_and_principle():
    with pytest.raises(ValidationError, match=r"rubric 'charter': principle 'helpful' is defined twice"):
        Rubric.model_validate(base_rubric([principle("helpful"), principle("honest"), principle("helpful")]))


@pytest.mark.parametrize("weight", [0.0, -0.5, math.inf, math.nan])
def test_non_positive_or_non_finite_weight_fails_naming_rubric_and_principle(weight):
    with pytest.raises(ValidationError, match=r"rubric 'charter': principle 'honest' has weight .*"
                                              r"weights must be positive"):
        Rubric.model_validate(base_rubric([principle("helpful"), principle("honest", weight)]))


@pytest.mark.parametrize("instruction", ["", "   \n\t "])
def test_principle_without_instruction_fails_naming_rubric_and_principle(instruction):
    with pytest.raises(ValidationError, match=r"rubric 'charter': principle 'honest' has no instruction"):
        Rubric.model_validate(base_rubric([principle("helpful"), principle("honest", instruction=instruction)]))


def test_principle_with_instruction_left_out_fails():
    with pytest.raises(ValidationError, match=r"rubric 'charter': principle 'terse' has no instruction"):
        Rubric.model_validate(base_rubric([principle("helpful"), {"name": "terse", "weight": 0.5}]))


def test_empty_principles_list_fails():
    with pytest.raises(ValidationError, match=r"rubric 'charter': principles is empty"):
        Rubric.model_validate(base_rubric([]))


def test_unknown_aggregate_and_extra_principle_keys_are_refused():
    with pytest.raises(ValidationError, match="aggregate"):
        Rubric.model_validate(base_rubric([principle("a"), principle("b")], aggregate="median"))
    with pytest.raises(ValidationError, match="extra"):
        Rubric.model_validate(base_rubric([principle("a", colour="red")]))


def test_weights_not_summing_to_one_are_normalised_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="server.rubrics.model"):
        rubric = Rubric.model_validate(base_rubric([principle("a", 2.0), principle("b", 1.0), principle("c", 1.0)]))
    assert [p.weight for p in rubric.principles] == pytest.approx([0.5, 0.25, 0.25])
    assert rubric.principle_names == ("a", "b", "c")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'charter'" in warnings[0].getMessage() and "sum to 4" in warnings[0].getMessage()


def test_default_weights_are_equal_shares(caplog):
    with caplog.at_level(logging.WARNING, logger="server.rubrics.model"):
        rubric = Rubric.model_validate(base_rubric([{"name": n, "instruction": "Rate it."} for n in "xyz"]))
    assert [p.weight for p in rubric.principles] == pytest.approx([1 / 3] * 3)
    assert sum(p.weight for p in rubric.principles) == pytest.approx(1.0)
    assert any("sum to 3" in r.getMessage() for r in caplog.records)


def test_weights_summing_to_one_are_kept_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="server.rubrics.model"):
        rubric = Rubric.model_validate(base_rubric([principle("a", 0.7), principle("b", 0.3)]))
    assert [p.weight for p in rubric.principles] == [0.7, 0.3]
    assert not [r for r in caplog.records if r.name == "server.rubrics.model"]


def test_rubric_without_principles_has_none():
    rubric = Rubric.model_validate(base_rubric(None))
    assert rubric.principles is None and rubric.principle_names == () and rubric.aggregate == "weighted_mean"


def test_rubric_file_with_a_bad_principle_fails_naming_file_rubric_and_principle(tmp_path):
    path = tmp_path / "rubrics.yaml"
    path.write_text(textwrap.dedent("""\
        - name: fine
          system: Judge.
          user_template: "{prompt} / {response}"
        - name: charter
          system: Judge.
          user_template: "{prompt} / {response}"
          principles:
            - {name: kind, weight: 0.5, instruction: "Is it kind?"}
            - {name: kind, weight: 0.5, instruction: "Is it kind, really?"}
        """))
    with pytest.raises(ValueError) as exc:
        load_file(path)
    message = str(exc.value)
    assert str(path) in message and "rubric #2" in message
    assert "rubric 'charter': principle 'kind' is defined twice" in message


def test_rubric_file_extending_the_constitution_with_a_zero_weight_fails(tmp_path, presets):
    path = tmp_path / "rubrics.yaml"
    path.write_text(textwrap.dedent("""\
        name: terse-assistant
        extends: assistant
        principles:
          - {name: helpful, weight: 1, instruction: "Is it helpful?"}
          - {name: terse, weight: 0, instruction: "Is it short?"}
        """))
    with pytest.raises(ValueError, match=r"rubric 'terse-assistant': principle 'terse' has weight 0"):
        load_file(path, presets)


def test_rubric_file_extending_the_constitution_keeps_its_principles(tmp_path, presets):
    path = tmp_path / "rubrics.yaml"
    path.write_text("name: min-assistant\nextends: assistant\naggregate: min\n")
    (rubric,) = load_file(path, presets)
    assert rubric.aggregate == "min"
    assert {p.name: p.weight for p in rubric.principles} == ASSISTANT_WEIGHTS
    assert rubric.principles == presets["assistant"].principles


def test_assistant_preset_is_a_three_principle_constitution(assistant):
    assert assistant.principle_names == ("helpful", "harmless", "honest")
    assert {p.name: p.weight for p in assistant.principles} == pytest.approx(ASSISTANT_WEIGHTS)
    assert assistant.aggregate == "weighted_mean"
    assert assistant.compare is not None
    for p in assistant.principles:
        assert p.instruction.strip() and p.compare_instruction and p.compare_instruction.strip()
        assert "\n" not in p.instruction  # folded YAML: one line each


def test_presets_load_without_warnings_and_the_old_ones_are_unchanged(caplog, presets):
    with caplog.at_level(logging.WARNING, logger="server.rubrics.model"):
        again = load_presets()
    assert not [r for r in caplog.records if r.name == "server.rubrics.model"]
    assert {"general", "harmless", "helpful", "summary", "assistant"} <= set(again)
    for name, rubric in again.items():
        assert rubric == presets[name]
        if name == "assistant":
            continue
        assert rubric.principles is None and rubric.principle_names == () and rubric.aggregate == "weighted_mean"
        assert not {"principles", "aggregate"} & set(rubric.model_dump(exclude_unset=True))


# =========================================================================== 2. aggregate_scores


def result(dist, mass: float, scale: Scale) -> ScoreResult:
    """A principle's result as expected_score makes it: score = E[label], reward its map."""
    return result_of(np.asarray(dist, dtype=np.float64), mass, scale)


SCALE5 = Scale(1, 5)
R1 = result((0.1, 0.2, 0.3, 0.2, 0.2), 0.9, SCALE5)
R2 = result((0.5, 0.3, 0.1, 0.05, 0.05), 0.4, SCALE5)
R3 = result((0.02, 0.08, 0.1, 0.3, 0.5), 0.7, SCALE5)


def test_weighted_mean_mixes_distributions_scores_and_masses():
    w = (0.5, 0.3, 0.2)
    out = aggregate_scores([R1, R2, R3], w, "weighted_mean", SCALE5)
    for k in range(5):
        assert out.distribution[k] == pytest.approx(sum(wi * r.distribution[k] for wi, r in zip(w, (R1, R2, R3))))
    score = 0.5 * R1.score + 0.3 * R2.score + 0.2 * R3.score
    assert out.score == pytest.approx(score)
    assert out.label_mass == pytest.approx(0.5 * 0.9 + 0.3 * 0.4 + 0.2 * 0.7)
    assert out.reward == pytest.approx(SCALE5.to_reward(score))
    assert out.reward == pytest.approx(0.5 * R1.reward + 0.3 * R2.reward + 0.2 * R3.reward)  # the map is affine
    assert sum(out.distribution) == pytest.approx(1.0)


def test_weighted_mean_hand_computed_on_two_labels():
    scale = Scale(0, 1)
    a, b = result((0.8, 0.2), 1.0, scale), result((0.2, 0.8), 0.5, scale)
    out = aggregate_scores([a, b], [0.75, 0.25], "weighted_mean", scale)
    assert out.distribution == pytest.approx((0.65, 0.35))
    assert out.score == pytest.approx(0.35)
    assert out.reward == pytest.approx(-0.3)
    assert out.label_mass == pytest.approx(0.875)


def test_min_returns_the_lowest_reward_result_whole():
    out = aggregate_scores([R1, R2, R3], (0.5, 0.3, 0.2), "min", SCALE5)
    assert R2.reward < R1.reward < R3.reward
    assert out is R2
    assert aggregate_scores([R3, R1], (0.9, 0.1), "min", SCALE5) is R1  # weights do not matter


def test_geometric_mean_hand_computed():
    scale = Scale(0, 1)
    a, b = result((0.8, 0.2), 0.9, scale), result((0.2, 0.8), 0.4, scale)
    even = aggregate_scores([a, b], [1, 1], "geometric_mean", scale)
    assert even.distribution == pytest.approx((0.5, 0.5))  # sqrt(.16) each
    assert even.label_mass == pytest.approx(0.6)  # sqrt(0.9 * 0.4)
    assert even.score == pytest.approx(0.5) and even.reward == pytest.approx(0.0)

    out = aggregate_scores([a, b], [0.75, 0.25], "geometric_mean", scale)
    yes, no = 0.8 ** 0.75 * 0.2 ** 0.25, 0.2 ** 0.75 * 0.8 ** 0.25
    assert out.distribution == pytest.approx((yes / (yes + no), no / (yes + no)))
    assert out.score == pytest.approx(no / (yes + no))
    assert out.label_mass == pytest.approx(0.9 ** 0.75 * 0.4 ** 0.25)


def test_geometric_mean_on_three_principles():
    w = (0.5, 0.3, 0.2)
    out = aggregate_scores([R1, R2, R3], w, "geometric_mean", SCALE5)
    raw = [math.prod(r.distribution[k] ** wi for wi, r in zip(w, (R1, R2, R3))) for k in range(5)]
    expected = [x / sum(raw) for x in raw]
    assert out.distribution == pytest.approx(expected)
    assert out.score == pytest.approx(sum(p * v for p, v in zip(expected, SCALE5.values)))
    assert out.reward == pytest.approx(SCALE5.to_reward(out.score))
    assert out.label_mass == pytest.approx(0.9 ** 0.5 * 0.4 ** 0.3 * 0.7 ** 0.2)


def test_geometric_mean_gives_zero_to_a_label_any_principle_rules_out():
    scale = Scale(1, 3)
    a, b = result((0.0, 0.5, 0.5), 1.0, scale), result((0.5, 0.5, 0.0), 1.0, scale)
    out = aggregate_scores([a, b], [0.5, 0.5], "geometric_mean", scale)
    assert out.distribution == pytest.approx((0.0, 1.0, 0.0))
    c = result((0.0, 0.0, 1.0), 1.0, scale)
    with pytest.raises(ValueError, match="no label is possible under every principle"):
        aggregate_scores([b, c], [0.5, 0.5], "geometric_mean", scale)


def test_sample_returns_the_picked_result_and_needs_a_pick():
    for pick, expected in enumerate((R1, R2, R3)):
        assert aggregate_scores([R1, R2, R3], (0.5, 0.3, 0.2), "sample", SCALE5, pick=pick) is expected
    for bad in (None, -1, 3):
        with pytest.raises(ValueError, match="sample needs the drawn principle's index"):
            aggregate_scores([R1, R2, R3], (0.5, 0.3, 0.2), "sample", SCALE5, pick=bad)


@pytest.mark.parametrize("how", ["weighted_mean", "min", "geometric_mean", "sample"])
def test_one_principle_is_returned_as_is(how):
    assert aggregate_scores([R2], [0.3], how, SCALE5, pick=0 if how == "sample" else None) is R2


def test_weights_of_a_subset_are_renormalised():
    assert normalised([0.5, 0.2]) == pytest.approx([5 / 7, 2 / 7])
    subset = aggregate_scores([R1, R3], [0.5, 0.2], "weighted_mean", SCALE5)
    assert subset.score == pytest.approx((5 * R1.score + 2 * R3.score) / 7)
    same = aggregate_scores([R1, R3], [5 / 7, 2 / 7], "weighted_mean", SCALE5)
    assert subset.distribution == pytest.approx(same.distribution)
    assert (subset.reward, subset.label_mass) == pytest.approx((same.reward, same.label_mass))
    geo = aggregate_scores([R1, R3], [0.5, 0.2], "geometric_mean", SCALE5)
    assert geo.distribution == pytest.approx(aggregate_scores([R1, R3], [5, 2], "geometric_mean", SCALE5).distribution)


def test_unknown_aggregate_and_bad_weights_raise():
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        aggregate_scores([R1, R2], [0.5, 0.5], "median", SCALE5)
    with pytest.raises(ValueError, match="2 results for 3 weights"):
        aggregate_scores([R1, R2], [0.5, 0.3, 0.2], "weighted_mean", SCALE5)
    for weights in ([0.5, 0.0], [1.0, -1.0], [1.0, math.nan], []):
        with pytest.raises(ValueError, match="weights must be positive finite numbers"):
            normalised(weights)


# =========================================================================== 3. aggregate_preferences


def pref(ab: float, ba: float | None) -> Preference:
    if ba is None:
        return Preference(p_a=ab, ab=ab, ba=None, consistent=None)
    return Preference(p_a=(ab + ba) / 2, ab=ab, ba=ba, consistent=(ab > 0.5 and ba > 0.5) or (ab < 0.5 and ba < 0.5))


def swapped(p: Preference) -> Preference:
    """The same pair with A and B exchanged: ab -> 1 - ba, ba -> 1 - ab, p_a -> 1 - p_a."""
    return Preference(p_a=1 - p.p_a, ab=1 - p.ba, ba=1 - p.ab, consistent=p.consistent)


PREFS = [pref(0.9, 0.7), pref(0.3, 0.4), pref(0.55, 0.35)]
W3 = (0.5, 0.3, 0.2)


def test_weighted_mean_of_preferences():
    out = aggregate_preferences(PREFS, W3, "weighted_mean")
    assert out.p_a == pytest.approx(0.5 * 0.8 + 0.3 * 0.35 + 0.2 * 0.45)
    assert out.ab == pytest.approx(0.5 * 0.9 + 0.3 * 0.3 + 0.2 * 0.55)
    assert out.ba == pytest.approx(0.5 * 0.7 + 0.3 * 0.4 + 0.2 * 0.35)
    assert out.p_a == pytest.approx((out.ab + out.ba) / 2)
    assert out.consistent is True  # ab 0.65, ba 0.54


def test_geometric_mean_of_preferences_formula():
    out = aggregate_preferences(PREFS, W3, "geometric_mean")

    def geo(values):
        yes = math.prod(v ** w for v, w in zip(values, W3))
        no = math.prod((1 - v) ** w for v, w in zip(values, W3))
        return yes / (yes + no)

    assert out.p_a == pytest.approx(geo([p.p_a for p in PREFS]))
    assert out.ab == pytest.approx(geo([p.ab for p in PREFS]))
    assert out.ba == pytest.approx(geo([p.ba for p in PREFS]))
    even = aggregate_preferences([pref(0.8, 0.8), pref(0.2, 0.2)], [1, 1], "geometric_mean")
    assert even.p_a == pytest.approx(0.5)


def test_min_of_preferences_picks_the_most_decided_principle():
    out = aggregate_preferences(PREFS, W3, "min")
    assert out is PREFS[0]  # |0.8 - 0.5| beats |0.35 - 0.5| and |0.45 - 0.5|
    against = [pref(0.6, 0.6), pref(0.1, 0.05), pref(0.7, 0.7)]
    assert aggregate_preferences(against, W3, "min") is against[1]


def test_sample_and_single_preferences():
    for pick in range(3):
        assert aggregate_preferences(PREFS, W3, "sample", pick) is PREFS[pick]
    with pytest.raises(ValueError, match="sample needs the drawn principle's index"):
        aggregate_preferences(PREFS, W3, "sample")
    assert aggregate_preferences(PREFS[1:2], [0.3], "geometric_mean") is PREFS[1]
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        aggregate_preferences(PREFS, W3, "median")
    with pytest.raises(ValueError, match="3 preferences for 2 weights"):
        aggregate_preferences(PREFS, W3[:2], "weighted_mean")


@pytest.mark.parametrize("how", ["weighted_mean", "geometric_mean", "min"])
def test_swapping_a_and_b_gives_one_minus_p_a(how):
    for prefs in (PREFS, [pref(0.6, 0.6), pref(0.1, 0.05), pref(0.7, 0.7)], [pref(0.99, 0.97), pref(0.02, 0.4)]):
        weights = W3[: len(prefs)]
        out = aggregate_preferences(prefs, weights, how)
        back = aggregate_preferences([swapped(p) for p in prefs], weights, how)
        assert back.p_a == pytest.approx(1 - out.p_a)
        assert back.ab == pytest.approx(1 - out.ba)
        assert back.ba == pytest.approx(1 - out.ab)
        assert back.consistent == out.consistent


@pytest.mark.parametrize("how", ["weighted_mean", "geometric_mean"])
def test_without_debias_ba_stays_none(how):
    single = [pref(0.8, None), pref(0.4, None)]
    out = aggregate_preferences(single, [0.6, 0.4], how)
    assert out.ba is None and out.consistent is None
    assert out.p_a == pytest.approx(out.ab)
    if how == "weighted_mean":
        assert out.p_a == pytest.approx(0.6 * 0.8 + 0.4 * 0.4)
    mixed = aggregate_preferences([pref(0.8, 0.7), pref(0.4, None)], [0.6, 0.4], how)
    assert mixed.ba is None and mixed.consistent is None


def test_geometric_mean_of_opposite_certainties_is_not_nan():
    try:
        out = aggregate_preferences([pref(1.0, 1.0), pref(0.0, 0.0)], [0.5, 0.5], "geometric_mean")
    except ValueError:
        return  # refusing is an acceptable fix too
    assert math.isfinite(out.p_a) and math.isfinite(out.ab) and math.isfinite(out.ba)


# =========================================================================== 4. sample_principle


def test_sample_principle_is_deterministic_per_seed_and_key():
    w = [0.5, 0.3, 0.2]
    picks = [sample_principle(w, 7, f"item {i}".encode()) for i in range(200)]
    assert picks == [sample_principle(w, 7, f"item {i}".encode()) for i in range(200)]
    assert set(picks) <= {0, 1, 2} and len(set(picks)) == 3
    other_seed = [sample_principle(w, 8, f"item {i}".encode()) for i in range(200)]
    assert other_seed != picks
    assert [sample_principle([1.0], s, b"x") for s in range(20)] == [0] * 20
    # Weights are normalised first: unnormalised ones draw exactly the same principles.
    assert [sample_principle([5, 3, 2], 7, f"item {i}".encode()) for i in range(200)] == picks


def test_sample_principle_frequencies_follow_the_weights():
    w = [0.5, 0.3, 0.2]
    n = 20000
    counts = [0, 0, 0]
    for i in range(n):
        k = sample_principle(w, 3, i.to_bytes(4, "little"))
        assert 0 <= k < 3
        counts[k] += 1
    for c, wi in zip(counts, w):
        assert abs(c / n - wi) < 0.02


def test_sample_principle_refuses_bad_weights():
    with pytest.raises(ValueError, match="weights must be positive"):
        sample_principle([0.5, 0.0], 0, b"x")


# =========================================================================== 5. rendering


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


PROMPT = "How do I boil an egg so the yolk stays soft?"
RESPONSE = "Put the egg in boiling water for six minutes, then cool it in cold water."


def test_compile_principles_gives_one_rating_form_per_principle(tokenizer, assistant):
    forms = PromptEncoder(tokenizer, 4096).compile_principles(assistant)
    assert list(forms) == ["helpful", "harmless", "honest"]
    for p in assistant.principles:
        form = forms[p.name]
        assert isinstance(form, CompiledRubric)
        assert form.rubric.principles is None and form.rubric.name == "assistant"
        assert form.scale == Scale(1, 10)
        last = form.piece_texts[-1]
        assert p.instruction.strip() in last
        assert last.index("</reply>") < last.index(p.instruction.strip())
        assert last.endswith(assistant.answer_prefix)
        assert all(o.instruction not in "".join(form.piece_texts) for o in assistant.principles if o is not p)
    pieces = {name: form.piece_ids for name, form in forms.items()}
    assert len({ids[:-1] for ids in pieces.values()}) == 1  # all but the last piece identical
    assert len({ids[-1] for ids in pieces.values()}) == 3


def test_every_principle_renders_an_item_the_same_up_to_the_end_of_the_response(tokenizer, assistant):
    encoder = PromptEncoder(tokenizer, 4096)
    forms = encoder.compile_principles(assistant)
    fixed = max(f.fixed_tokens for f in forms.values())
    encoded = {n: encoder.encode(f, PROMPT, RESPONSE, fixed_tokens=fixed) for n, f in forms.items()}
    shared = {n: len(e.input_ids) - len(forms[n].piece_ids[-1]) for n, e in encoded.items()}
    assert len(set(shared.values())) == 1
    (cut,) = set(shared.values())
    assert len({e.input_ids[:cut] for e in encoded.values()}) == 1
    for name, e in encoded.items():
        p = next(p for p in assistant.principles if p.name == name)
        assert not e.truncated
        assert e.input_ids[cut:] == forms[name].piece_ids[-1]
        assert e.text.index(PROMPT) < e.text.index(RESPONSE) < e.text.index(p.instruction.strip())
        assert e.shared_prefix == len(forms[name].piece_ids[0])


def test_truncation_cuts_the_response_alike_for_every_principle(tokenizer, assistant):
    forms = PromptEncoder(tokenizer, 4096).compile_principles(assistant)
    fixed = {n: f.fixed_tokens for n, f in forms.items()}
    assert len(set(fixed.values())) > 1  # the instructions differ in length
    encoder = PromptEncoder(tokenizer, max(fixed.values()) + 150)
    forms = encoder.compile_principles(assistant)
    long_response = " ".join(f"Step {i}: stir the water gently and wait." for i in range(300))
    shared = max(fixed.values())
    encoded = {n: encoder.encode(f, PROMPT, long_response, fixed_tokens=shared) for n, f in forms.items()}
    assert all(e.truncated for e in encoded.values())
    assert all(len(e.input_ids) <= encoder.max_input_tokens for e in encoded.values())
    heads = {e.input_ids[: len(e.input_ids) - len(forms[n].piece_ids[-1])] for n, e in encoded.items()}
    assert len(heads) == 1  # the same cut, the same tokens up to the end of the response
    (head,) = heads
    assert len(head) == len(forms["helpful"].piece_ids[0]) + len(forms["helpful"].piece_ids[1]) + (
        encoder.max_input_tokens - shared)
    # Each form's own budget would cut the response at different places.
    own = {n: encoder.encode(f, PROMPT, long_response) for n, f in forms.items()}
    own_heads = {e.input_ids[: len(e.input_ids) - len(forms[n].piece_ids[-1])] for n, e in own.items()}
    assert len(own_heads) > 1


def test_pairwise_principle_forms_use_the_compare_instruction(tokenizer, assistant):
    forms = PromptEncoder(tokenizer, 4096).compile_principles(assistant, pairwise=True)
    assert list(forms) == ["helpful", "harmless", "honest"]
    for p in assistant.principles:
        form = forms[p.name]
        assert isinstance(form, CompiledComparison)
        assert len(form.closers) == 3
        last = form.piece_texts[-1]
        assert p.compare_instruction.strip() in last and p.instruction.strip() not in last
        assert last.index("</reply_2>") < last.index(p.compare_instruction.strip())
        assert last.endswith(assistant.compare.answer_prefix)
    assert len({f.piece_ids[:-1] for f in forms.values()}) == 1


def test_pairwise_form_falls_back_to_the_instruction(tokenizer, assistant):
    data = assistant.model_dump()
    data["principles"][2]["compare_instruction"] = None
    rubric = Rubric.model_validate(data)
    forms = PromptEncoder(tokenizer, 4096).compile_principles(rubric, pairwise=True)
    assert rubric.principles[2].instruction.strip() in forms["honest"].piece_texts[-1]
    no_compare = rubric.model_copy(update={"compare": None})
    with pytest.raises(RubricCannotCompare, match="no pairwise form"):
        PromptEncoder(tokenizer, 4096).compile_principles(no_compare, pairwise=True)


def test_compile_forms_lists_every_principle_in_both_forms(tokenizer, assistant, presets):
    encoder = PromptEncoder(tokenizer, 4096)
    forms = encoder.compile_forms(assistant)
    assert [type(f) for f in forms] == [CompiledRubric] * 3 + [CompiledComparison] * 3
    assert [f.piece_ids for f in forms[:3]] == [f.piece_ids for f in encoder.compile_principles(assistant).values()]
    plain = encoder.compile_forms(presets["general"])
    assert [type(f) for f in plain] == [CompiledRubric, CompiledComparison]
    assert encoder.compile_principles(presets["general"]) == {}


# =========================================================================== 6. Scorer.chosen_principles


@pytest.fixture(scope="module")
def scorer():
    from server.scorer import Scorer

    return Scorer.__new__(Scorer)


def test_chosen_principles_defaults_to_all_in_rubric_order(scorer, assistant, presets):
    assert scorer.chosen_principles(assistant, None) == ["helpful", "harmless", "honest"]
    assert scorer.chosen_principles(presets["general"], None) == []


def test_chosen_principles_keeps_rubric_order(scorer, assistant):
    assert scorer.chosen_principles(assistant, ["honest", "helpful"]) == ["helpful", "honest"]
    assert scorer.chosen_principles(assistant, ["harmless"]) == ["harmless"]
    assert scorer.chosen_principles(assistant, ["honest", "honest"]) == ["honest"]


def test_chosen_principles_refuses_unknown_names(scorer, assistant):
    with pytest.raises(InvalidRubric) as exc:
        scorer.chosen_principles(assistant, ["helpful", "kind"])
    assert exc.value.status_code == 422
    assert "'assistant'" in exc.value.message and "'kind'" in exc.value.message
    assert "helpful, harmless, honest" in exc.value.message
    with pytest.raises(InvalidRubric, match=r"\(none named\).*helpful, harmless, honest"):
        scorer.chosen_principles(assistant, [])


def test_chosen_principles_refuses_a_rubric_without_principles(scorer, presets):
    with pytest.raises(InvalidRubric, match="rubric 'general' has no principles to choose from") as exc:
        scorer.chosen_principles(presets["general"], ["helpful"])
    assert exc.value.status_code == 422


# =========================================================================== 7. client, trainer, evals


def principle_result(reward: float) -> dict:
    return PrincipleScore(reward=reward, score=5.5 + 4.5 * reward, distribution=[0.1] * 10, label_mass=0.9,
                          label_entropy=math.log(10)).model_dump()


def score_result(principles) -> dict:
    return {**item_score(0.1, distribution=[0.1] * 10, label_mass=0.9, label_entropy=math.log(10),
                         input_tokens=120).model_dump(), "principles": principles}


def score_answer(results: list[dict]) -> dict:
    return {"model": "m", "rubric": "assistant", "scale": {"min": 1, "max": 10}, "results": results}


def test_scored_item_parses_each_principles_reward():
    data = score_answer([
        score_result({"helpful": principle_result(0.5), "harmless": principle_result(-0.25),
                      "honest": principle_result(1.0)}),
        score_result(None)])
    items, (model, rubric) = _parse_results(data, 2, URL, "/score", ScoreAnswer)
    assert (model, rubric) == ("m", "assistant")
    assert all(isinstance(p, PrincipleAnswer) for p in items[0].principles.values())
    assert {name: p.reward for name, p in items[0].principles.items()} == {
        "helpful": 0.5, "harmless": -0.25, "honest": 1.0}
    assert items[0].principles["harmless"].score == 5.5 - 4.5 * 0.25
    assert items[0].reward == 0.1
    assert items[1].principles is None


@pytest.mark.parametrize("principles, where", [
    ([0.5, 0.2], "principles"),
    ("helpful", "principles"),
    ({"helpful": 0.5}, "principles.helpful"),
    ({"helpful": {}}, "principles.helpful.reward"),
    ({"helpful": {**principle_result(0.5), "reward": "high"}}, "principles.helpful.reward"),
    ({"helpful": {**principle_result(0.5), "reward": 1.5}}, "principles.helpful.reward"),
    ({"helpful": {**principle_result(0.5), "reward": -1.01}}, "principles.helpful.reward"),
    ({"helpful": {**principle_result(0.5), "reward": math.nan}}, "principles.helpful.reward"),
    ({"helpful": {**principle_result(0.5), "reward": True}}, "principles.helpful.reward"),
    # A principle's other fields may be absent (a server of your own); when there, they are checked.
    ({"helpful": {**principle_result(0.5), "label_entropy": -0.1}}, "principles.helpful.label_entropy"),
    ({"helpful": principle_result(0.5), "honest": None}, "principles.honest"),
])
def test_malformed_principles_are_refused(principles, where):
    with pytest.raises(RewardServerError, match=rf"/score returned an invalid answer: results\.0\.{where}: "):
        _parse_results(score_answer([score_result(principles)]), 1, URL, "/score", ScoreAnswer)


def preference(p_a: float, ab: float, ba: float | None, **extra) -> dict:
    orders = {"ab": ab, "ba": ba}
    return {"p_a": p_a, "orders": orders, "consistent": None if ba is None else (ab > 0.5) == (ba > 0.5),
            "label_mass": {"ab": 0.9, "ba": None if ba is None else 0.8}, **extra}


def compare_answer(results: list[dict]) -> dict:
    return {"model": "m", "rubric": "assistant", "labels": ["A", "B"], "debiased": True, "results": results}


def test_compared_item_parses_each_principles_p_a():
    base = {**preference(0.6, 0.7, 0.5), "input_tokens": 40, "truncated": False, "cached": False}
    data = compare_answer([{**base, "principles": {"helpful": preference(0.9, 0.9, 0.9),
                                                   "honest": preference(0.0, 0.0, 0.0)}}, base])
    items, _ = _parse_results(data, 2, URL, "/compare", CompareResponse)
    assert isinstance(items[0], ItemPreference)
    assert {name: p.p_a for name, p in items[0].principles.items()} == {"helpful": 0.9, "honest": 0.0}
    assert items[0].principles["helpful"].orders.ba == 0.9 and items[0].principles["helpful"].label_mass.ba == 0.8
    assert items[1].principles is None
    with pytest.raises(RewardServerError, match=r"/compare returned an invalid answer: results\.0\.principles\."
                       r"honest\.p_a: .*\(got '-0\.1'\)"):
        _parse_results(compare_answer([{**base, "principles": {"honest": preference(-0.1, 0.0, 0.0)}}]), 1, URL,
                       "/compare", CompareResponse)
    # /score's principles carry a read (reward, score, ...), not a preference.
    with pytest.raises(RewardServerError, match=r"results\.0\.principles\.x\.reward: Field required"):
        _parse_results(score_answer([score_result({"x": preference(0.5, 0.5, 0.5)})]), 1, URL, "/score",
                       ScoreAnswer)


def item(reward: float, principles: dict[str, float] | None = None, mass: float = 0.9) -> ItemScore:
    return item_score(reward, label_mass=mass, distribution=[0.1] * 10, label_entropy=math.log(10),
                      principles=None if principles is None else {
                          name: PrincipleScore(**principle_result(r)) for name, r in principles.items()})


def test_principle_means_over_items():
    items = [item(0.1, {"helpful": 0.5, "honest": 0.0}), item(0.2, {"helpful": -0.1, "honest": 1.0}),
             item(0.0, {"helpful": 0.2})]
    means = principle_means(items)
    assert list(means) == ["reward_principle_helpful", "reward_principle_honest"]
    assert means["reward_principle_helpful"] == pytest.approx(0.2)
    assert means["reward_principle_honest"] == pytest.approx(0.5)  # over the items that read it
    assert principle_means([item(0.3), item(0.4)]) == {}


def test_trl_batch_metrics_include_each_principle():
    from trainer.frameworks.trl_reward import batch_metrics

    items = [item(0.1, {"helpful": 0.5, "harmless": 1.0}, mass=0.8), item(0.3, {"helpful": 0.1, "harmless": 0.0})]
    metrics = batch_metrics(items, 1.5)
    assert metrics["reward_principle_helpful"] == pytest.approx(0.3)
    assert metrics["reward_principle_harmless"] == pytest.approx(0.5)
    assert metrics["label_mass"] == pytest.approx(0.85) and metrics["reward_seconds"] == 1.5
    assert not any(k.startswith("reward_principle_") for k in batch_metrics([item(0.1)], 1.0))


def test_metrics_plot_draws_a_curve_per_principle(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from trainer.analysis.metrics_log import MetricsLog

    labels = []
    original = Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    log = MetricsLog(tmp_path)
    for step in range(1, 4):
        row = {"step": step, "reward_mean": 0.1 * step, "reward_std": 0.05, "kl": 0.01 * step,
               "reward_principle_helpful": 0.2 * step}
        if step != 2:
            row["reward_principle_honest"] = -0.1 * step  # a step without it plots as a gap
        log.write(row)
    out = log.plot()
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "helpful" in labels and "honest" in labels


def test_alignment_eval_reports_each_principles_accuracy(tmp_path, monkeypatch):
    from evals import alignment
    from evals.config import AlignmentConfig

    n = 6
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"chosen {i}", "rejected": f"rejected {i}"})
                            + "\n" for i in range(n)))

    class FakeClient:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def info(self):
            return {"default_rubric": "assistant", "model": "fake"}

        def takes_reference(self, rubric=None):
            return False

        def compare_items(self, prompts, first, second, debias=True, references=None):
            out = []
            for a in first:
                agree = 0.9 if a.startswith("chosen") else 0.1  # P(first better), right about chosen
                ba = 0.5 if debias else None
                out.append(ItemPreference.model_validate({
                    **preference(0.5, 0.5, ba), "input_tokens": 40, "truncated": False, "cached": False,
                    "principles": {"helpful": preference(agree, agree, agree if debias else None),
                                   "honest": preference(1.0 - agree, 1.0 - agree, 1.0 - agree if debias else None)}}))
            return out

        def score_items(self, prompts, responses, references=None):
            return [item(0.0, {"helpful": 0.5 if r.startswith("chosen") else -0.5,
                               "honest": -0.5 if r.startswith("chosen") else 0.5}) for r in responses]

    monkeypatch.setattr(alignment, "make_client", lambda config: FakeClient())
    for debias in (True, False):
        config = AlignmentConfig(data=str(data), output=str(tmp_path / f"out-{debias}"), debias=debias, seed=1,
                                 batch_size=4, concurrency=1)
        summary = alignment.evaluate_alignment(config)
        assert summary["principles"]["helpful"]["pairwise"]["rate"] == 1.0
        assert summary["principles"]["helpful"]["direct"]["rate"] == 1.0
        assert summary["principles"]["honest"]["pairwise"]["rate"] == 0.0
        assert summary["principles"]["honest"]["direct"]["rate"] == 0.0
        assert summary["pairwise_accuracy"] == 0.5  # the aggregate p_a is a tie
        markdown = (tmp_path / f"out-{debias}" / "alignment.md").read_text()
        assert "principle helpful" in markdown and "principle honest" in markdown
