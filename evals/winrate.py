"""Win rate: policy A against policy B on the same prompts, judged pairwise by the labeler.

A wins a prompt when P(A better) from ``/compare`` is above 1/2 (both orders averaged by
default); exact ties count one half. The interval is a 95% Wilson interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from drlaif.prompt_text import same_prompt_key
from drlaif.stats import outcome, proportion, summarize
from evals.common import in_batches, make_client, references_for, write_outputs
from evals.config import GenerationSettings, WinrateConfig
from evals.data import load_eval_prompts, load_responses
from evals.responses import generate, is_response_file
from trainer.data.prompt_datasets import Prompt


def eval_prompts(config: GenerationSettings) -> tuple[list[Prompt], list[str | None]]:
    """The prompts for model policies (at most ``limit``) and each one's reference answer (None: none)."""
    prompts, references = load_eval_prompts(config.prompts, config.dataset_split, config.prompt_field,
                                            reference_field=config.reference_field)
    prompts = prompts[: config.limit] if config.limit is not None else prompts
    return prompts, [references.get(same_prompt_key(p)) for p in prompts]


def answers(policy: str, prompts: list[Prompt], config: GenerationSettings) -> list[str]:
    """One response per prompt from a model policy."""
    return [r[0] for r in generate(policy, prompts, temperature=config.temperature,
                                   max_new_tokens=config.max_new_tokens,
                                   batch_size=config.generation_batch_size, seed=config.seed)]


def _paired_responses(config: WinrateConfig) -> tuple[list[Prompt], list[str], list[str], list[str | None]]:
    """Prompts, both policies' responses and the prompts' reference answers: from files where
    given, generated for the others.

    Files fix the prompts (two files must hold the same prompts in the same order).
    """
    files = {name: load_responses(path) for name, path in (("a", config.policy_a), ("b", config.policy_b))
             if is_response_file(path)}
    if "a" in files and "b" in files and files["a"].prompts != files["b"].prompts:
        raise ValueError("the two response files must hold the same prompts in the same order")
    if files:
        first = next(iter(files.values()))
        prompts, references = first.prompts, first.references
    else:
        prompts, references = eval_prompts(config)
    if config.limit is not None:
        prompts, references = prompts[: config.limit], references[: config.limit]
    out = []
    for name, policy in (("a", config.policy_a), ("b", config.policy_b)):
        out.append(files[name].responses[: len(prompts)] if name in files else answers(policy, prompts, config))
    return prompts, out[0], out[1], references


def _plot(result, p_a: list[float], title: str):
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        bars = left.bar(["A wins", "tie", "B wins"], [result.wins, result.ties, result.losses],
                        color=["tab:green", "tab:gray", "tab:red"])
        left.bar_label(bars)
        left.set(ylabel="prompts", title=f"win rate of A: {result}")
        right.hist(p_a, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
        right.axvline(0.5, color="black", linestyle="--", linewidth=1)
        right.set(xlabel="P(A better), /compare", ylabel="prompts", title="Per-prompt preference")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    return draw


def evaluate_winrate(config: WinrateConfig) -> dict:
    if not config.policy_a or not config.policy_b:
        raise ValueError("--policy-a and --policy-b are required "
                         "(model dir, hub id, 'embedded', or response file)")
    started = time.perf_counter()
    prompts, responses_a, responses_b, references = _paired_responses(config)
    n = len(prompts)
    with make_client(config) as client:
        info = client.info()
        refs = references_for(client, config.rubric, references, "prompts")
        compared = in_batches(
            lambda s: client.compare_items(prompts[s], responses_a[s], responses_b[s], debias=config.debias,
                                           references=refs[s] if refs else None),
            n, config, "judging (/compare)")
    p_a = [c.p_a for c in compared]
    result = proportion(outcome(p - 0.5) for p in p_a)
    masses = [c.label_mass.ab for c in compared] + [c.label_mass.ba for c in compared
                                                    if c.label_mass.ba is not None]
    rubric = config.rubric or info.get("default_rubric")
    summary = {
        "n": n, "win_rate": result.rate, "ci_low": result.ci_low, "ci_high": result.ci_high,
        "wins": result.wins, "ties": result.ties, "losses": result.losses,
        "mean_p_a": float(np.mean(p_a)),
        "position_consistency": float(np.mean([c.consistent for c in compared])) if config.debias else None,
        "label_mass": summarize(masses),
        "policy_a": config.policy_a, "policy_b": config.policy_b,
        "rubric": rubric, "model": info.get("model"),
        "debias": config.debias, "interval": "95% Wilson score interval; ties count one half",
        "seconds": round(time.perf_counter() - started, 1),
    }
    items = [{"index": i, "prompt": prompt, "response_a": a, "response_b": b, "p_a": c.p_a,
              "orders": {"ab": c.orders.ab, "ba": c.orders.ba}, "consistent": c.consistent, "outcome": outcome(c.p_a - 0.5)}
             for i, (prompt, a, b, c) in enumerate(zip(prompts, responses_a, responses_b, compared))]
    table = [("prompts", str(n)), ("win rate of A over B", str(result)),
             ("wins / ties / losses", f"{result.wins} / {result.ties} / {result.losses}"),
             ("mean P(A better)", f"{summary['mean_p_a']:.3f}")]
    if config.debias:
        table.append(("position consistency", f"{summary['position_consistency']:.3f}"))
    table += [("label mass (mean, min)",
               f"{summary['label_mass']['mean']:.3f}, {summary['label_mass']['min']:.3f}"),
              ("A, B", f"{config.policy_a}, {config.policy_b}"),
              ("rubric, labeler", f"{rubric}, {summary['model']}")]
    notes = [("A wins a prompt when P(A better) > 0.5 (both orders averaged unless --no-debias); ties count "
             "one half; brackets are a 95% Wilson interval.")]
    title = f"A = {Path(config.policy_a).name}, B = {Path(config.policy_b).name}"
    write_outputs(config.output, "winrate", "Win rate, judged by the AI labeler", summary, table, items,
                  notes, _plot(result, p_a, title))
    return summary
