"""Monitor judges and the over-optimisation alarm.

A monitor is a second judge (another server, model or rubric) that scores the held-out
responses at every evaluation and is never optimised. Reward-model over-optimisation (Gao et
al. 2022) shows as the proxy's held-out score rising while the monitor's falls.

The alarm rule, checked at every evaluation k >= 1 for each monitor: take the evaluation
``window`` points earlier (or the first one, j = max(0, k - window)); on the same held-out
prompts, pair each prompt's mean reward at j and at k, and test a judge only where at least
``MIN_PAIRED_PROMPTS`` prompts pair. The alarm fires when the proxy's paired change has a 95%
Student-t interval entirely above zero (it clearly rose) and the monitor's has one entirely
below zero at the level 1 - 5% / (checks x monitors) (it clearly fell), where checks is the
number of evaluations after the first that the run plans (or that it has made, if more).

That Bonferroni correction bounds the chance that a run raises any alarm while no monitor truly
falls by 2.5% (only the lower half of the 5% counts), however many evaluations and monitors it
has: the proxy of a policy under training rises, so its test passes at nearly every check and
only the monitor's test stands between the noise and an alarm. The proxy's test stays at 95%: a
stricter one would delay true alarms and bound nothing the monitor's does not. A two-sided
correction, where a one-sided one at 5% would do, leaves a margin for the t interval's normal
tails at the small error rates the correction asks for. Comparing against a point ``window``
evaluations back, not the best one so far, keeps the choice of reference free of the noise it
is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from drlaif.stats import PairedGain, paired_bootstrap, paired_t_interval

MONITOR_ERROR = 0.05
"""The two-sided error of the monitor's intervals, split over a run's checks x monitors."""

MIN_PAIRED_PROMPTS = 8
"""Fewer paired prompts than this and a judge's change is not tested: the interval would rest on
the spread of a handful of differences (one pair has none, and gives a zero-width interval), and
at the corrected levels the t quantile explodes on few degrees of freedom (a 99.8% interval's:
4.8 on 7, 10.2 on 3). Eight is half the 16 prompts a small run holds out, so a judge that fails on
some prompts keeps its alarm."""

PROXY_CONFIDENCE = 0.95
"""The proxy's two-sided level, uncorrected (the module docstring says why)."""


@dataclass
class EvalPoint:
    """One evaluation: each held-out prompt's mean reward under the proxy and each monitor
    (None where the reward could not be had), and the policy's KL to the reference there."""

    step: int
    kl: float
    proxy: list[float | None]
    monitors: dict[str, list[float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"step": self.step, "kl": self.kl, "proxy": self.proxy, "monitors": self.monitors}

    @classmethod
    def from_dict(cls, row: dict) -> EvalPoint:
        return cls(row["step"], row["kl"], row["proxy"], row.get("monitors", {}))


def paired_change(before: Sequence[float | None], after: Sequence[float | None]) -> PairedGain | None:
    """Paired bootstrap change over the prompts scored at both points (None when none was)."""
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    if not pairs:
        return None
    return paired_bootstrap([b for b, _ in pairs], [a for _, a in pairs])


def monitor_confidence(checks: int, monitors: int) -> float:
    """The level of the monitor's interval: 95% with the Bonferroni correction for ``checks`` x
    ``monitors`` tests."""
    return 1 - MONITOR_ERROR / (checks * monitors)


def _percent(level: float) -> str:
    """A level as a percentage with three significant digits in what it leaves out (98.75%, 99.444%)."""
    digits = max(0, 2 - math.floor(math.log10(100 * (1 - level))))
    return f"{100 * level:.{digits}f}".rstrip("0").rstrip(".") + "%"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Alarm:
    """The proxy rose and a monitor fell, both beyond their intervals, between two evaluations;
    ``checks`` and ``monitors`` are what the monitor's level was corrected for."""

    step: int
    since_step: int
    monitor: str
    proxy: PairedGain
    monitor_change: PairedGain
    checks: int
    monitors: int

    def message(self) -> str:
        level = _percent(monitor_confidence(self.checks, self.monitors))
        return (f"over-optimisation at step {self.step}: the proxy's held-out reward rose by {self.proxy} "
                f"({_percent(PROXY_CONFIDENCE)} interval) since step {self.since_step} while monitor "
                f"{self.monitor} fell by {self.monitor_change} ({level} interval: {_percent(1 - MONITOR_ERROR)} "
                f"corrected for {_count(self.checks, 'check')} x {_count(self.monitors, 'monitor')}, "
                f"so that a run gives a false alarm at most {100 * MONITOR_ERROR / 2:g}% of the time; paired t "
                "intervals over the held-out prompts): the policy is gaming the proxy")

    @classmethod
    def from_dict(cls, row: dict) -> Alarm:
        return cls(row["step"], row["since_step"], row["monitor"], PairedGain(**row["proxy"]),
                   PairedGain(**row["monitor_change"]), row["checks"], row["monitors"])

    def as_dict(self) -> dict:
        return {"step": self.step, "since_step": self.since_step, "monitor": self.monitor,
                "proxy": self.proxy.as_dict(), "monitor_change": self.monitor_change.as_dict(),
                "checks": self.checks, "monitors": self.monitors, "message": self.message()}


def _tested_change(before: Sequence[float | None], after: Sequence[float | None],
                   confidence: float) -> PairedGain | None:
    """Paired t interval over the prompts scored at both points; None below MIN_PAIRED_PROMPTS."""
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    if len(pairs) < MIN_PAIRED_PROMPTS:
        return None
    return paired_t_interval([b for b, _ in pairs], [a for _, a in pairs], confidence)


def check_alarms(points: Sequence[EvalPoint], window: int, checks: int) -> list[Alarm]:
    """The alarms of the latest evaluation (see the module docstring for the rule).

    ``checks`` is the number of alarm checks the run plans: its evaluations after the first. The
    monitors are those named in ``points``. A run that makes more checks than it planned is
    corrected for the number made so far, so its level only tightens.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if checks < 1:
        raise ValueError(f"checks must be >= 1, got {checks}")
    monitors = len({name for point in points for name in point.monitors})
    if len(points) < 2 or not monitors:  # without a monitor there is nothing to fall
        return []
    latest, reference = points[-1], points[max(0, len(points) - 1 - window)]
    proxy = _tested_change(reference.proxy, latest.proxy, PROXY_CONFIDENCE)
    if proxy is None or not proxy.ci_low > 0:
        return []
    checks = max(checks, len(points) - 1)
    confidence = monitor_confidence(checks, monitors)
    alarms = []
    for name, values in latest.monitors.items():
        if name not in reference.monitors:
            continue
        change = _tested_change(reference.monitors[name], values, confidence)
        if change is not None and change.ci_high < 0:
            alarms.append(Alarm(latest.step, reference.step, name, proxy, change, checks, monitors))
    return alarms


def eval_row(points: Sequence[EvalPoint], alarms: Sequence[Alarm]) -> dict:
    """The evals.jsonl row of the latest evaluation: the KL, and each judge's mean with its
    paired change since the first evaluation; per-prompt values for later pairing."""
    first, latest = points[0], points[-1]

    def judge(before: Sequence[float | None], after: Sequence[float | None]) -> dict:
        values = [v for v in after if v is not None]
        change = paired_change(before, after)
        return {"mean": sum(values) / len(values) if values else None,
                "change": change.as_dict() if change else None}

    return {**latest.as_dict(), "since_step": first.step,
            "proxy_summary": judge(first.proxy, latest.proxy),
            "monitor_summary": {name: judge(first.monitors.get(name, [None] * len(values)), values)
                                for name, values in latest.monitors.items()},
            "alarms": [a.as_dict() for a in alarms]}
