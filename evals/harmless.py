"""Harmless rate: the share of a policy's responses whose reward under the ``harmless`` rubric
(or another) is above a threshold (default 0, the middle of the scale). 95% Wilson interval."""

from __future__ import annotations

import time
from pathlib import Path

from drlaif.stats import proportion, summarize
from evals.common import in_batches, make_client, references_for, server_info, write_outputs
from evals.config import HarmlessConfig
from evals.data import load_responses
from evals.responses import is_response_file
from evals.winrate import answers, eval_prompts


def _plot(rewards: list[float], threshold: float, title: str):
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(rewards, bins=20, range=(-1, 1), color="tab:green", edgecolor="white")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.set(xlabel="reward (/score)", ylabel="responses", title=title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    return draw


def evaluate_harmless(config: HarmlessConfig) -> dict:
    if not config.policy:
        raise ValueError("--policy is required (model dir, hub id, 'embedded', or response file)")
    started = time.perf_counter()
    if is_response_file(config.policy):
        prompts, responses, references = load_responses(config.policy)
        if config.limit is not None:
            prompts, responses, references = prompts[: config.limit], responses[: config.limit], \
                references[: config.limit]
    else:
        prompts, references = eval_prompts(config)
        responses = answers(config.policy, prompts, config)
    n = len(prompts)
    with make_client(config) as client:
        info = server_info(client)
        refs = references_for(client, config.rubric, references, "responses")
        scored = in_batches(lambda s: client.score_items(prompts[s], responses[s], references=refs[s] if refs else None),
                            n, config, "scoring (/score)")
    rewards = [s.reward for s in scored]
    result = proportion(1.0 if r > config.threshold else 0.0 for r in rewards)
    rubric = config.rubric or info.get("default_rubric")
    # A server other than drlaif's may send only rewards: its absent scores and masses are not summarised.
    scores = [s.score for s in scored if s.score is not None]
    masses = [s.label_mass for s in scored if s.label_mass is not None]
    summary = {
        "n": n, "harmless_rate": result.rate, "ci_low": result.ci_low, "ci_high": result.ci_high,
        "harmless": result.wins, "threshold": config.threshold,
        "reward": summarize(rewards), "score": summarize(scores) if scores else None,
        "label_mass": summarize(masses) if masses else None,
        "policy": config.policy, "rubric": rubric, "model": info.get("model"),
        "interval": "95% Wilson score interval", "seconds": round(time.perf_counter() - started, 1),
    }
    items = [{"index": i, "prompt": p, "response": r, "reward": s.reward, "score": s.score,
              "label_mass": s.label_mass, "harmless": s.reward > config.threshold}
             for i, (p, r, s) in enumerate(zip(prompts, responses, scored))]
    table = [("responses", str(n)), (f"harmless rate (reward > {config.threshold:g})", str(result)),
             ("mean reward", f"{summary['reward']['mean']:+.3f}")]
    if masses:
        table.append(("label mass (mean, min)",
                      f"{summary['label_mass']['mean']:.3f}, {summary['label_mass']['min']:.3f}"))
    table += [("policy", config.policy), ("rubric, labeler", f"{rubric}, {summary['model']}")]
    notes = [(f"A response counts as harmless when its /score reward under rubric {rubric!r} is above "
             f"{config.threshold:g}; brackets are a 95% Wilson interval.")]
    write_outputs(config.output, "harmless", "Harmless rate, judged by the AI labeler", summary, table, items,
                  notes, _plot(rewards, config.threshold, f"{Path(config.policy).name}: rubric {rubric}"))
    return summary
