"""AI labeler alignment (Lee et al. 2023): how often the labeler agrees with human preferences.

Measured two ways on the same human pairs:

- pairwise: ``/compare`` gives P(chosen better); the labeler agrees when it is above 1/2;
- direct: ``/score`` rates chosen and rejected on their own; it agrees when the chosen one's
  reward is higher (the d-RLAIF reward, used as a preference).

Ties count one half. Intervals are 95% Wilson intervals (``drlaif.stats``).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np

from drlaif.stats import outcome, proportion, summarize
from evals.common import in_batches, make_client, references_for, write_outputs
from evals.config import AlignmentConfig
from evals.data import load_pairs

log = logging.getLogger(__name__)


def _plot(p_chosen: list[float], reward_margin: list[float], title: str):
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.hist(p_chosen, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
        left.axvline(0.5, color="black", linestyle="--", linewidth=1)
        left.set(xlabel="P(human-chosen response better), /compare", ylabel="pairs", title="Pairwise")
        right.hist(reward_margin, bins=21, color="tab:orange", edgecolor="white")
        right.axvline(0.0, color="black", linestyle="--", linewidth=1)
        right.set(xlabel="reward(chosen) - reward(rejected), /score", ylabel="pairs", title="Direct")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    return draw


def evaluate_alignment(config: AlignmentConfig) -> dict:
    """Run the evaluation against the server; writes the outputs and returns the summary."""
    if not config.data:
        raise ValueError("--data is required (HH-RLHF or prompt/chosen/rejected JSONL)")
    started = time.perf_counter()
    pairs = load_pairs(config.data, config.limit)
    n = len(pairs)
    prompts = [p.prompt for p in pairs]
    # Debiased comparisons read both orders, so chosen can always be A. A single read shows
    # chosen first or second at random, so position bias cannot pass for agreement.
    rng = random.Random(config.seed)
    chosen_first = [True] * n if config.debias else [rng.random() < 0.5 for _ in range(n)]
    first = [p.a if cf else p.b for p, cf in zip(pairs, chosen_first)]
    second = [p.b if cf else p.a for p, cf in zip(pairs, chosen_first)]

    with make_client(config) as client:
        info = client.info()
        refs = references_for(client, config.rubric, [p.reference for p in pairs], "pairs")
        compared = in_batches(
            lambda s: client.compare_items(prompts[s], first[s], second[s], debias=config.debias,
                                           references=refs[s] if refs else None),
            n, config, "pairwise (/compare)")
        # Chosen and rejected of a pair side by side: items 2i and 2i + 1.
        score_prompts = [p for p in prompts for _ in (0, 1)]
        score_responses = [r for p in pairs for r in (p.a, p.b)]
        score_refs = [r for r in refs for _ in (0, 1)] if refs else None
        scored = in_batches(lambda s: client.score_items(score_prompts[s], score_responses[s],
                                                         references=score_refs[s] if score_refs else None),
                            2 * n, config, "direct (/score)")

    p_chosen = [c.p_a if cf else 1.0 - c.p_a for c, cf in zip(compared, chosen_first)]
    rewards = [(scored[2 * i].reward, scored[2 * i + 1].reward) for i in range(n)]
    pairwise = proportion(outcome(p - 0.5) for p in p_chosen)
    direct = proportion(outcome(rc - rr) for rc, rr in rewards)

    # Which slot the labeler picked in each order it read (1: the response shown first).
    picked_first = [c.orders.ab > 0.5 for c in compared] + [c.orders.ba < 0.5 for c in compared if c.orders.ba is not None]
    compare_mass = [c.label_mass.ab for c in compared] + [c.label_mass.ba for c in compared
                                                          if c.label_mass.ba is not None]
    rubric = config.rubric or info.get("default_rubric")
    # A constitution: the same two accuracies for each principle on its own.
    by_principle = {}
    for name in dict.fromkeys(n for c in compared for n in (c.principles or {})):
        p_name = [c.principles[name].p_a if cf else 1.0 - c.principles[name].p_a for c, cf in zip(compared, chosen_first)]
        d_name = [(scored[2 * i].principles[name].reward, scored[2 * i + 1].principles[name].reward) for i in range(n)]
        by_principle[name] = {"pairwise": proportion(outcome(p - 0.5) for p in p_name).as_dict(),
                              "direct": proportion(outcome(rc - rr) for rc, rr in d_name).as_dict()}
    summary = {
        "n": n,
        "pairwise_accuracy": pairwise.rate,
        "pairwise_ci_low": pairwise.ci_low, "pairwise_ci_high": pairwise.ci_high,
        "direct_accuracy": direct.rate,
        "direct_ci_low": direct.ci_low, "direct_ci_high": direct.ci_high,
        "pairwise": pairwise.as_dict(),
        "direct": direct.as_dict(),
        "position_consistency": (float(np.mean([c.consistent for c in compared])) if config.debias else None),
        "first_position_rate": float(np.mean(picked_first)),
        "order_accuracy": ({"chosen_first": proportion(outcome(c.orders.ab - 0.5) for c in compared).rate,
                            "chosen_second": proportion(outcome(c.orders.ba - 0.5) for c in compared).rate}
                           if config.debias else None),
        "pairwise_direct_agreement": float(np.mean([(p > 0.5) == (rc > rr)
                                                    for p, (rc, rr) in zip(p_chosen, rewards)])),
        "label_mass": {"compare": summarize(compare_mass),
                       "score": summarize([s.label_mass for s in scored])},
        "truncated": {"compare": sum(c.truncated for c in compared),
                      "score": sum(s.truncated for s in scored)},
        # Reasoning rubrics: rationale tokens the labeler wrote per /compare pair and per /score item.
        "reasoning_tokens": {"compare": summarize([c.reasoning_tokens for c in compared]),
                             "score": summarize([s.reasoning_tokens for s in scored])},
        "principles": by_principle or None,
        "data": str(config.data), "limit": config.limit, "rubric": rubric, "model": info.get("model"),
        "debias": config.debias, "interval": "95% Wilson score interval; ties count one half",
        "seconds": round(time.perf_counter() - started, 1),
    }
    items = [{
        "index": i, "p_chosen": p, "orders": {"ab": c.orders.ab, "ba": c.orders.ba}, "chosen_first": cf,
        "consistent": c.consistent, "reward_chosen": rc, "reward_rejected": rr,
        "pairwise_outcome": outcome(p - 0.5), "direct_outcome": outcome(rc - rr),
        "label_mass_compare": [c.label_mass.ab, c.label_mass.ba],
        "label_mass_score": [scored[2 * i].label_mass, scored[2 * i + 1].label_mass],
    } for i, (p, c, cf, (rc, rr)) in enumerate(zip(p_chosen, compared, chosen_first, rewards))]

    table = [("pairs", str(n)), ("pairwise accuracy (/compare)", str(pairwise)),
             ("direct accuracy (/score)", str(direct))]
    if config.debias:
        table.append(("position consistency", f"{summary['position_consistency']:.3f}"))
        table.append(("accuracy, chosen shown first / second",
                      (f"{summary['order_accuracy']['chosen_first']:.3f} / "
                      f"{summary['order_accuracy']['chosen_second']:.3f}")))
    table += [("labeler picks the first slot", f"{summary['first_position_rate']:.3f}"),
              ("label mass /compare (mean, min)", (f"{summary['label_mass']['compare']['mean']:.3f}, "
                                                  f"{summary['label_mass']['compare']['min']:.3f}")),
              ("label mass /score (mean, min)", (f"{summary['label_mass']['score']['mean']:.3f}, "
                                                f"{summary['label_mass']['score']['min']:.3f}")),
              ("rubric, labeler", f"{rubric}, {summary['model']}")]
    for name, acc in by_principle.items():
        table.insert(-1, (f"principle {name}: pairwise, direct accuracy",
                          f"{acc['pairwise']['rate']:.3f}, {acc['direct']['rate']:.3f}"))
    if summary["reasoning_tokens"]["score"]["mean"] > 0:
        table.insert(-1, ("rationale tokens per /compare pair, per /score item (mean)",
                          (f"{summary['reasoning_tokens']['compare']['mean']:.1f}, "
                          f"{summary['reasoning_tokens']['score']['mean']:.1f}")))
    order_note = (", both orders averaged." if config.debias
                  else ", one order, chosen first or second at random.")
    notes = ["Accuracy counts ties as one half; brackets are 95% Wilson intervals.",
             "Pairwise: P(chosen better) from /compare" + order_note,
             "Direct: the sign of reward(chosen) - reward(rejected) from /score.",
             "Chance is 0.5. Position consistency: share of pairs whose two orders prefer the same response."]
    write_outputs(config.output, "alignment", "AI labeler alignment with human preferences", summary, table,
                  items, notes, _plot(p_chosen, [rc - rr for rc, rr in rewards],
                                      f"{Path(str(config.data)).name}: {n} pairs, rubric {rubric}"))
    return summary
