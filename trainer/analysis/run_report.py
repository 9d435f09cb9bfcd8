"""The report of a training run: did the policy get better by the labeler's judgement, and how?

Written as OUTPUT_DIR/report.md beside curves.png, and summarised on the terminal:
- held-out reward before and after training on the same prompts (the mean over sampled
  responses per prompt, or one greedy response), with the gain's 95% paired-bootstrap interval;
- gaming indicators: the share of responses that carry rating-like text ("Rating: 10",
  "10/10") or are empty, before and after, and in the training rollouts of the first and
  last steps. A gain that comes with these rising is the policy gaming the labeler, not
  answering better, and the report says so;
- over-optimisation: alarms (the proxy rose while a monitor judge fell, see
  trainer/analysis/overoptimisation_alarm.py) open the report; each evaluation's proxy and monitor means
  with their paired change since the first, and the KL to the reference;
- the judge's length bias: the within-group correlation of response length and reward per
  step, with a warning when it climbs past LENGTH_CORR_THRESHOLD;
- a few held-out responses side by side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drlaif.stats import PairedGain, paired_bootstrap
from trainer.analysis.metrics_log import MetricsLog

# Text that tells a judge what score to give: "Rating: 10", "score of 9", "10/10", "9 out of 10".
RATING_LIKE = re.compile(
    r"\b(?:rating|rated|score|scored|grade|rate)\b\W{0,4}(?:of\s+)?\d{1,2}\b|\b\d{1,2}\s*(?:/|out\s+of)\s*10\b",
    re.IGNORECASE)

# Shares above this after training, and above the share before, are flagged as gaming.
GAMING_THRESHOLD = 0.10

# A mean within-group length-reward correlation above this over the last steps, and above
# its mean over the first steps, is flagged: the reward is being earned by length. At 0.5 a
# quarter of the reward's variation inside a group goes with length alone.
LENGTH_CORR_THRESHOLD = 0.5


def is_rating_like(response: str) -> bool:
    return RATING_LIKE.search(response) is not None


def is_empty(response: str) -> bool:
    return not response.strip()


@dataclass(frozen=True)
class Indicators:
    """Shares of responses that look like gaming rather than answering."""

    n: int
    rating_like: float
    empty: float

    @classmethod
    def of(cls, responses: Sequence[str]) -> Indicators:
        n = len(responses)
        if n == 0:
            return cls(0, 0.0, 0.0)
        return cls(n, sum(map(is_rating_like, responses)) / n, sum(map(is_empty, responses)) / n)


def gaming_warnings(before: Indicators, after: Indicators) -> list[str]:
    """What a rise in the indicators means, in words (empty when nothing rose past the threshold)."""
    out = []
    for name, what in (("rating_like", ("contain rating-like text (the policy may be telling the labeler "
                                       "its score)")),
                       ("empty", "are empty (the policy may be collapsing to no answer)")):
        b, a = getattr(before, name), getattr(after, name)
        if a > GAMING_THRESHOLD and a > b:
            out.append(f"{a:.0%} of responses after training {what}, against {b:.0%} before")
    return out


@dataclass
class RunReport:
    gain: PairedGain | None
    before_reward: float | None
    after_reward: float | None
    held_out: tuple[Indicators, Indicators] | None
    rollouts: tuple[Indicators, Indicators]
    warnings: list[str]
    examples: list[tuple[str, str, float, str, float]]  # prompt, before, reward, after, reward
    method: str = "greedy"  # how the held-out responses were produced
    alarms: list[str] = field(default_factory=list)  # over-optimisation alarms, in words
    evaluations: list[dict] = field(default_factory=list)  # evals.jsonl rows
    length_corr: list[tuple[int, float | None]] = field(default_factory=list)  # (step, corr) per step
    # Held-out KL to the reference per response (nats), after minus before (0: the policy starts
    # as the reference), with its paired interval; and the run's KL budget (target_kl), if any.
    kl: PairedGain | None = None
    kl_budget: float | None = None

    def kl_verdict(self) -> str | None:
        """The held-out KL against the budget and the gain against its interval, in plain words."""
        if self.kl is None:
            return None
        budget = "" if self.kl_budget is None else (
            f", {'within' if self.kl.mean <= self.kl_budget else 'OVER'} the KL budget of {self.kl_budget:g}")
        text = (f"held-out KL to the reference: {self.kl.mean:.2f} nats per response "
                f"[{self.kl.ci_low:.2f}, {self.kl.ci_high:.2f}]{budget}")
        if self.gain is not None and not self.gain.significant:
            text += ("; at this KL the held-out gain is not outside its 95% interval: this run did not show "
                     "that the policy improved")
        return text

    def as_dict(self) -> dict:
        return {
            "alarms": self.alarms,
            "length_reward_corr": length_corr_windows(self.length_corr),
            "gain": self.gain.as_dict() if self.gain else None,
            "kl": self.kl.as_dict() if self.kl else None,
            "kl_budget": self.kl_budget,
            "held_out_indicators": [vars(i) for i in self.held_out] if self.held_out else None,
            "rollout_indicators": [vars(i) for i in self.rollouts],
            "warnings": self.warnings,
        }


def length_corr_windows(per_step: Sequence[tuple[int, float | None]], window: int = 5) -> dict[str, float | None]:
    """Mean within-group length-reward correlation over the first and the last ``window`` steps."""
    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    values = [c for _, c in per_step]
    return {"first": mean(values[:window]), "last": mean(values[-window:])}


def length_warnings(per_step: Sequence[tuple[int, float | None]], window: int = 5) -> list[str]:
    """A warning when the length-reward correlation climbed past LENGTH_CORR_THRESHOLD."""
    w = length_corr_windows(per_step, window)
    first, last = w["first"], w["last"]
    if last is not None and last > LENGTH_CORR_THRESHOLD and (first is None or last > first):
        return [(f"inside groups, reward correlates with response length at {last:.2f} over the last steps "
                f"(first steps: {'n/a' if first is None else f'{first:.2f}'}): the policy may be earning reward "
                "by length (--length-control removes the within-group length trend)")]
    return []


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " / ".join(m["content"] for m in prompt if m.get("role") != "system")


def build_report(summary: dict, rollouts: Sequence[dict], window: int = 5, n_examples: int = 4,
                 metrics: Sequence[dict] = ()) -> RunReport:
    """The report of a run from its summary (``before``/``after`` evaluations, ``alarms``,
    ``evaluations``), rollouts.jsonl rows and metrics.jsonl rows."""
    steps = sorted({r["step"] for r in rollouts})
    first = [r["response"] for r in rollouts if r["step"] in steps[:window]]
    last = [r["response"] for r in rollouts if r["step"] in steps[-window:]]
    rollout_ind = (Indicators.of(first), Indicators.of(last))
    warnings = gaming_warnings(*rollout_ind)
    length_corr = [(int(m["step"]), m.get("length_reward_corr")) for m in metrics if "length_reward_corr" in m]
    warnings += length_warnings(length_corr, window)

    before, after = summary.get("before"), summary.get("after")
    gain = held_out = kl = None
    examples: list[tuple[str, str, float, str, float]] = []
    if before and after:
        # A prompt whose samples were all dropped for want of a reward has no number to pair.
        both = [(x, y) for x, y in zip(before["examples"], after["examples"], strict=True)
                if x["reward"] is not None and y["reward"] is not None]
        b, a = [x for x, _ in both], [y for _, y in both]
        gain = paired_bootstrap([e["reward"] for e in b], [e["reward"] for e in a]) if both else None
        if all("kl" in e for e in before["examples"] + after["examples"]) and before["examples"]:
            kl = paired_bootstrap([e["kl"] for e in before["examples"]], [e["kl"] for e in after["examples"]])
        held_out = (Indicators.of([r for e in b for r in e.get("responses", [e["response"]])]),
                    Indicators.of([r for e in a for r in e.get("responses", [e["response"]])]))
        warnings += [w for w in gaming_warnings(*held_out) if w not in warnings]
        # The largest moves first: those show what training changed.
        pairs = sorted(zip(b, a, strict=True), key=lambda p: -abs(p[1]["reward"] - p[0]["reward"]))
        examples = [(_prompt_text(x["prompt"]), x["response"], x["reward"], y["response"], y["reward"])
                    for x, y in pairs[:n_examples]]
    k = (before or {}).get("samples_per_prompt", 0)
    method = f"mean of {k} sampled responses per prompt" if k else "greedy"
    alarms = [a["message"] for a in summary.get("alarms", [])]
    return RunReport(gain, before["reward_mean"] if before else None, after["reward_mean"] if after else None,
                     held_out, rollout_ind, warnings, examples, method, alarms, list(summary.get("evaluations", [])),
                     length_corr, kl, summary.get("kl_budget"))


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return (text or "*(empty)*").replace("|", "\\|")


def _change(change: dict | None) -> str:
    if change is None:
        return "n/a"
    return f"{change['mean']:+.3f} [{change['ci_low']:+.3f}, {change['ci_high']:+.3f}]"


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def render_markdown(report: RunReport, title: str = "drlaif training run") -> str:
    lines = [f"# {title}", ""]
    if report.alarms:
        lines += [f"> **Over-optimisation alarm:** {a}." for a in report.alarms]
        lines += ["", "![proxy and monitors against KL](overoptimisation.png)", ""]
    if report.gain is not None:
        verdict = ("the gain is outside its 95% interval" if report.gain.significant
                   else "the interval includes zero: no clear change")
        lines += [f"## Held-out reward ({report.method}, the same prompts before and after)", "",
                  "| before | after | gain | 95% interval (paired bootstrap) | prompts |",
                  "|---|---|---|---|---|",
                  (f"| {report.before_reward:+.3f} | {report.after_reward:+.3f} | {report.gain.mean:+.3f} | "
                  f"[{report.gain.ci_low:+.3f}, {report.gain.ci_high:+.3f}] | {report.gain.n} |"), "",
                  f"So {verdict}.", ""]
    if kl := report.kl_verdict():
        lines += [kl[0].upper() + kl[1:] + ".", ""]
    lines += ["## Gaming indicators", "", "| share of responses | " +
              ("held-out before | held-out after | " if report.held_out else "") +
              "rollouts, first steps | rollouts, last steps |",
              "|---|" + ("---|---|" if report.held_out else "") + "---|---|"]
    for name, label in (("rating_like", "rating-like text"), ("empty", "empty")):
        cells = [getattr(i, name) for i in (*(report.held_out or ()), *report.rollouts)]
        lines.append(f"| {label} | " + " | ".join(f"{c:.0%}" for c in cells) + " |")
    lines.append("")
    lines += ([f"**Warning:** {w}." for w in report.warnings] if report.warnings
              else [("No sign of gaming: neither indicator rose above "
                    f"{GAMING_THRESHOLD:.0%}.")])
    lines.append("")
    if report.evaluations:
        monitors = list(dict.fromkeys(n for r in report.evaluations for n in r.get("monitor_summary", {})))
        since = report.evaluations[0].get("since_step", 0)
        lines += [f"## Evaluations: proxy and monitors (change since step {since}, 95% paired bootstrap)", "",
                  "| step | KL | proxy | change | " + " | ".join(f"{m} | change" for m in monitors) + " |",
                  "|---|---|---|---|" + "---|---|" * len(monitors)]
        for r in report.evaluations:
            cells = [str(r["step"]), f"{r['kl']:.3f}", _value(r["proxy_summary"]["mean"]),
                     _change(r["proxy_summary"]["change"])]
            for m in monitors:
                ms = r.get("monitor_summary", {}).get(m, {})
                cells += [_value(ms.get("mean")), _change(ms.get("change"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if not report.alarms and monitors:
            lines += ["No over-optimisation alarm: no monitor fell beyond its interval while the proxy rose.", ""]
    if report.length_corr:
        w = length_corr_windows(report.length_corr)
        lines += ["## Length and reward", "",
                  ("Correlation of response length and reward inside groups (responses to the same prompt), "
                  f"per step; a warning above {LENGTH_CORR_THRESHOLD:g}."), "",
                  "| step | " + " | ".join(str(s) for s, _ in report.length_corr) + " |",
                  "|---|" + "---|" * len(report.length_corr),
                  "| corr. | " + " | ".join("n/a" if c is None else f"{c:+.2f}" for _, c in report.length_corr) + " |",
                  "", f"First steps {_value(w['first'])}, last steps {_value(w['last'])}.", ""]
    if report.examples:
        lines += ["## Held-out responses, before and after (largest changes first)", "",
                  "| prompt | before | reward | after | reward |", "|---|---|---|---|---|"]
        for prompt, b, rb, a, ra in report.examples:
            lines.append(f"| {_cell(prompt, 90)} | {_cell(b)} | {rb:+.3f} | {_cell(a)} | {ra:+.3f} |")
        lines.append("")
    lines += ["## Curves", "", "![reward, KL, response length and judge signals per step](curves.png)", ""]
    if report.evaluations and not report.alarms:
        lines += ["![proxy and monitors against KL](overoptimisation.png)", ""]
    return "\n".join(lines)


def render_terminal(report: RunReport) -> str:
    lines = [f"OVER-OPTIMISATION ALARM: {a}" for a in report.alarms]
    if report.gain is not None:
        lines.append(f"held-out reward ({report.gain.n} prompts, {report.method}): before {report.before_reward:+.3f}, "
                     f"after {report.after_reward:+.3f}, gain {report.gain} (95% paired bootstrap)"
                     + ("" if report.gain.significant else "  -- not significant"))
    if kl := report.kl_verdict():
        lines.append(kl)
    rb, ra = report.rollouts
    lines.append(f"gaming indicators, rollouts first/last steps: rating-like text {rb.rating_like:.0%} -> "
                 f"{ra.rating_like:.0%}, empty {rb.empty:.0%} -> {ra.empty:.0%}")
    if report.held_out:
        hb, ha = report.held_out
        lines.append(f"gaming indicators, held-out before/after: rating-like text {hb.rating_like:.0%} -> "
                     f"{ha.rating_like:.0%}, empty {hb.empty:.0%} -> {ha.empty:.0%}")
    if report.length_corr:
        corr = length_corr_windows(report.length_corr)
        lines.append(f"length-reward correlation inside groups, first/last steps: {_value(corr['first'])} -> "
                     f"{_value(corr['last'])}")
    lines += [f"WARNING: {w}" for w in report.warnings]
    for prompt, b, rb_, a, ra_ in report.examples[:2]:
        lines += [f"  prompt: {_cell(prompt, 100)}", f"    before ({rb_:+.3f}): {_cell(b, 150)}",
                  f"    after  ({ra_:+.3f}): {_cell(a, 150)}"]
    return "\n".join(lines)


def write_report(output_dir: Path, summary: dict, title: str = "drlaif training run") -> tuple[Path, RunReport]:
    """Build the report from OUTPUT_DIR/rollouts.jsonl and ``summary``; write report.md."""
    path = Path(output_dir) / "rollouts.jsonl"
    rollouts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    metrics_path = Path(output_dir) / "metrics.jsonl"
    metrics = ([json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
               if metrics_path.exists() else [])
    report = build_report(summary, rollouts, metrics=metrics)
    out = Path(output_dir) / "report.md"
    out.write_text(render_markdown(report, title))
    return out, report


def write_run_files(output_dir: Path, metrics: MetricsLog, summary: dict) -> str:
    """A finished run's files: the curves (curves.png, overoptimisation.png), report.md and
    summary.json, with their paths and the report's figures added to ``summary``; returns the
    report as the terminal shows it."""
    summary["plot"] = str(metrics.plot())
    path, report = write_report(output_dir, summary)
    summary["report"], summary["report_stats"] = str(path), report.as_dict()
    (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return render_terminal(report)
